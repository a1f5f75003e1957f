"""``make bench-layer``: the service's own layer (BentoML, the gate, the ``/v1`` forwarder,
``/generate``'s loopback) measured without a GPU or a model, against a stand-in for vLLM's
OpenAI app that streams pre-made chunks as fast as it can. See ``bench.layer.__main__``."""
