"""vLLM as a generation engine behind the runtime's
:class:`~engine.runtime.ports.GenerationEngine` port (the ``[vllm]`` extra).

vLLM runs as its own ``AsyncLLM``, with its own scheduler and key/value cache, in its
own processes (so a program that starts it needs the ``if __name__ == "__main__"``
guard).  Each submitted prompt is one vLLM request streaming its new tokens with their
log-probabilities *after* temperature scaling (``logprobs_mode="processed_logprobs"``:
the trainer's ``log_softmax(logits / temperature)``), each tagged with the policy
version of the weights vLLM holds.

A weight update is a token-boundary interruption, as the staleness policies expect:
:meth:`VLLMEngine.pause` aborts every request in flight (vLLM returns what each had
generated), :meth:`VLLMEngine.load_weights` pushes the trainer's tensors into vLLM's
workers in place (written to a private staging file that the workers'
``reload_weights`` reads, through ``collective_rpc``; no restart), and
:meth:`VLLMEngine.resume` submits each interrupted sequence again as a continuation
(its prompt plus its tokens so far) under the new version.  Its earlier tokens keep
the versions that sampled them; those after carry the new one.  Every step of that
goes through one command queue that :meth:`VLLMEngine.run` works off in order, so the
synchronous port calls take effect in the order they were made.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from engine.runtime.ports import GenerationHandle, check_request

#: The part of a trainer's parameter names that vLLM's names lack (``HFPolicy`` wraps
#: the Hugging Face model as ``lm``).
POLICY_PREFIX = "lm."


class VLLMEngine:
    """The port over a vLLM ``AsyncLLM`` of the Hugging Face model in ``model_dir``."""

    #: vLLM's scheduler batches the running sequences only
    decodes_every_slot = False

    def __init__(
        self,
        model_dir: str | Path,
        *,
        slots: int,
        eos_id: int,
        temperature: float = 1.0,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int = 2048,
        memory_fraction: float | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model_dir = str(model_dir)
        self.slots, self.eos_id, self.temperature, self.seed = slots, eos_id, temperature, seed
        self.dtype: Any = dtype  # one of vLLM's dtype names
        self.max_len = max_model_len
        # vLLM's CPU backend takes this share of host memory for its cache: keep it small
        self.memory_fraction = memory_fraction if memory_fraction is not None else 0.05
        self.version = 0  # the version the port was last told (load_weights)
        self._serving = 0  # the version of the weights vLLM holds now
        self._commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._live: dict[str, tuple[GenerationHandle, asyncio.Task[None]]] = {}
        self._held: list[GenerationHandle] = []  # interrupted or waiting while paused
        self._paused = False
        self._closed = False
        self._ids = itertools.count()
        self._llm: Any = None
        self._staging: str | None = None  # where new weights are written for vLLM to read
        self.steps = 0  # streamed deltas received
        self.decoded_tokens = 0
        self.weight_updates = 0

    # -- the port --------------------------------------------------------------
    def submit(self, prompt: list[int], max_new_tokens: int, *, stream: bool = False) -> GenerationHandle:
        """Queue ``prompt`` for up to ``max_new_tokens`` tokens."""
        check_request(prompt, max_new_tokens, self.max_len)
        handle = GenerationHandle(prompt, max_new_tokens, stream)
        self._commands.put_nowait(("submit", handle))
        return handle

    def pause(self) -> None:
        """Interrupt every sequence in flight at its last token; nothing new starts until :meth:`resume`."""
        self._paused = True
        self._commands.put_nowait(("pause",))

    def resume(self) -> None:
        """Go on: interrupted sequences continue (under new weights, if any came)."""
        self._paused = False
        self._commands.put_nowait(("resume",))

    def load_weights(self, state_dict: Mapping[str, Any], version: int) -> None:
        """Take the trainer's weights as ``version`` (copied now: the trainer goes on
        changing its own); they reach vLLM before the next sequence starts."""
        weights = [(name.removeprefix(POLICY_PREFIX), tensor.detach().to("cpu", copy=True)) for name, tensor in state_dict.items()]
        self.version = version
        self._commands.put_nowait(("weights", weights, version))

    def close(self) -> None:
        """End :meth:`run`; sequences not finished fail with ``CancelledError``."""
        self._closed = True
        self._commands.put_nowait(("close",))

    async def run(self) -> None:
        """Start vLLM, then carry out the port's calls in order until :meth:`close`;
        when vLLM fails to start, every sequence submitted fails with its error."""
        try:
            self._llm = self._start()
        except Exception as error:
            while not self._commands.empty():
                command = self._commands.get_nowait()
                if command[0] == "submit":
                    command[1]._fail(error)
            raise
        try:
            while True:
                command = await self._commands.get()
                kind = command[0]
                if kind == "close":
                    break
                if kind == "submit":
                    self._held.append(command[1])
                    if not self._paused:
                        self._release()
                elif kind == "pause":
                    await self._interrupt()
                elif kind == "weights":
                    await self._interrupt()  # a bump without a pause still cuts at a token
                    await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": self._stage(command[1])})
                    self._serving = command[2]
                    self.weight_updates += 1
                    for handle in self._held:
                        if handle.generation.tokens:
                            handle.generation.interruptions += 1
                elif kind == "resume":
                    self._release()
        finally:
            await self._shutdown()

    # -- internals ----------------------------------------------------------------
    def _stage(self, weights: list[tuple[str, Any]]) -> str:
        """Write ``weights`` as the one safetensors file of this engine's staging folder
        (vLLM's workers read it from there, in their own processes); returns the folder."""
        from safetensors.torch import save_file

        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="rollout-ledger-vllm-")
        save_file({name: tensor.contiguous() for name, tensor in weights}, os.path.join(self._staging, "model.safetensors"))
        return self._staging

    def _start(self) -> Any:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.model_dir, tokenizer=self.model_dir, dtype=self.dtype, seed=self.seed, max_model_len=self.max_len,
            max_num_seqs=self.slots, enforce_eager=True, gpu_memory_utilization=self.memory_fraction,
            logprobs_mode="processed_logprobs", disable_log_stats=True,
        )
        return AsyncLLM.from_engine_args(args)

    def _release(self) -> None:
        """Start every held sequence as a vLLM request."""
        held, self._held = self._held, []
        for handle in held:
            if handle.cancelled:
                handle._fail(asyncio.CancelledError("generation cancelled"))
                continue
            request = f"r{next(self._ids)}"
            self._live[request] = (handle, asyncio.create_task(self._drive(request, handle)))

    async def _interrupt(self) -> None:
        """Abort every request in flight and wait for their last tokens; their sequences
        are held for :meth:`_release`."""
        if not self._live:
            return
        live = dict(self._live)
        await self._llm.abort(list(live))
        await asyncio.gather(*(task for _, task in live.values()), return_exceptions=True)

    async def _drive(self, request: str, handle: GenerationHandle) -> None:
        """Stream one request's tokens into ``handle``; an aborted one is held to go on."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        generation = handle.generation
        version = self._serving
        params = SamplingParams(
            max_tokens=handle.max_new_tokens - len(generation.tokens), temperature=self.temperature, logprobs=0,
            output_kind=RequestOutputKind.DELTA, stop_token_ids=[self.eos_id] if self.eos_id >= 0 else None,
            ignore_eos=self.eos_id < 0, seed=self.seed + int(request[1:]),
        )
        finished = False
        try:
            async for output in self._llm.generate(
                TokensPrompt(prompt_token_ids=generation.prompt + generation.tokens), params, request_id=request
            ):
                completion = output.outputs[0]
                for token, logprobs in zip(completion.token_ids, completion.logprobs or ()):
                    handle._emit(token, logprobs[token].logprob, version)
                self.steps += 1
                self.decoded_tokens += len(completion.token_ids)
                if handle.cancelled:
                    await self._llm.abort(request)
                    handle._fail(asyncio.CancelledError("generation cancelled"))
                    return
                if output.finished:
                    finished = completion.finish_reason != "abort"
            if finished or len(generation.tokens) >= handle.max_new_tokens:
                handle._finish()
            else:
                self._held.append(handle)
        except Exception as error:  # a failed request fails its sequence, not the engine
            handle._fail(error)
        finally:
            self._live.pop(request, None)

    async def _shutdown(self) -> None:
        for handle, task in list(self._live.values()):
            task.cancel()
            handle._fail(asyncio.CancelledError("generation engine closed"))
        for handle in self._held:
            handle._fail(asyncio.CancelledError("generation engine closed"))
        self._held.clear()
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
