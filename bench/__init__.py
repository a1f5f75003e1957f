"""``make bench``: this service against raw ``vllm serve`` and Hugging Face transformers on the
same model, engine settings and workload, reported as ratios within one run.

- ``plan``: how much to run (full, quick); ``workload``: model, engine settings, prompts;
- ``servers``: start, time, sample and stop the service and raw vLLM;
- ``clients``: ``vllm bench serve`` for OpenAI routes, our client for ``/generate``;
- ``hf_runner``: the transformers baseline, in a process of its own;
- ``metrics``: per-request timings to the reported numbers; ``membw``: bandwidth and floor;
- ``run``: the whole benchmark; ``report``: markdown page and chart; ``meta``: machine facts.
"""
