"""Group scenes: layouts (people, boxes, prompts), planners that pick each person's attributes in exact
proportions (rules, or an OpenAI-compatible LLM), a region-conditioned sampler and verification."""
