"""The llmos gateway: HTTP for the tools people already use, speaking only syscalls to the kernel.

    app.py        the Starlette application: routes, identity, error shapes, the kernel pool
    identity.py   Authorization: Bearer KEY -> llmos user (the keys file, mode 0600)
    kernels.py    one kernel connection (AsyncClient) per llmos user
    errors.py     ApiError, errno -> HTTP status, OpenAI's and Ollama's error bodies
    body.py       request bodies read field by field with type checks (400 naming the field)
    generation.py one request's processes: spawn (or fork n ways), stream, finish, kill on disconnect
    openai.py     /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /tokenize, ...
    ollama.py     /api/generate, /api/chat, /api/tags, /api/ps, /api/show, /api/version, /api/embed
    metrics.py    /metrics: the kernel's COUNTERS in vLLM's metric names under `llmos:`
    dashboard.py  / and its live feed: process table, KV block map, throughput and latency
    static/       the dashboard page (plain JS and SVG, no CDN)
"""
