"""vLLM as the generation engine (the ``[vllm]`` extra): :class:`~engine.backends.vllm.engine.VLLMEngine`."""
