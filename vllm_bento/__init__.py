"""Serve an LLM through vLLM's in-process async engine behind BentoML.

Modules, each named for what it holds:

- ``settings``: the one typed settings object and its hardware-aware defaults.
- ``engine_values``: ``EngineConfig``, the concrete values an engine starts with.
- ``hardware``: what this machine can run (GPUs, bf16 on the CPU).
- ``packaged_model``: the offline default model, converted into the BentoML model store.
- ``vllm_entrypoints``: the only code that touches vLLM's internal entrypoint modules.
- ``openai_mount``: the ASGI app mounted at ``/v1`` that forwards to vLLM's OpenAI app.
- ``loopback``: the ``/generate`` stream, looped back through ``openai.AsyncOpenAI``.
- ``in_process``: the httpx transport that takes that client's requests to ``/v1`` in-process.
"""
