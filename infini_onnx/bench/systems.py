"""The systems under test, behind one small interface (each lives in its own worker process).

A system streams tokens: `ingest(ids)` advances its state by one chunk of ids (a whole segment,
or for the full-attention baseline a chunk of the same length), `decode(n)` times n greedy
decode steps continuing the stream, one token per call, without changing the ingested state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from infini_onnx.bench.stats import time_calls


class System(Protocol):
    params: int
    chunk: int  # tokens per ingest call

    def reset(self) -> None: ...

    def ingest(self, ids: np.ndarray) -> None: ...

    def decode(self, tokens: int) -> list[float]: ...


class OrtInfini:
    """infini-onnx: the runtime's Stream over an exported (or quantised) step graph."""

    def __init__(self, onnx_path: Path, threads: int):
        from infini_onnx.runtime import InfiniModel, Stream

        self.model = InfiniModel(onnx_path, threads=threads)
        self.new_stream = lambda: Stream(self.model)
        self.stream = self.new_stream()
        self.chunk = self.model.config.segment_len
        self.params = 0  # set by the caller from the model directory (the graph has no count)

    def reset(self) -> None:
        self.stream = self.new_stream()

    def ingest(self, ids: np.ndarray) -> None:
        self.stream.feed(ids)

    def jump(self, tokens: int) -> None:
        """Move the stream's position counter by `tokens` (a multiple of the segment length),
        its tensors unchanged: the ring's slots then hold other ages, which changes the mask
        but no work; a step's work does not depend on the position (bench/decode.py)."""
        from infini_onnx.runtime import Stream

        state = self.stream.state
        self.stream = Stream(self.model, replace(state, tokens_seen=state.tokens_seen + tokens))

    def decode(self, tokens: int, after: int = 0) -> list[float]:
        """Step times of `tokens` greedy decode steps on a fork of the stream, after `after`
        more random tokens (after = segment_len - 1: the last position of a segment)."""
        fork = self.stream.fork()
        if after:
            fork.feed(np.random.default_rng(after).integers(0, self.model.config.vocab_size, after))
        generator: Iterator[int] = fork.generate(max_new_tokens=tokens, temperature=0, stop=())
        return time_calls(lambda: next(generator), tokens)


class TorchReference:
    """The project's PyTorch reference, eager: `forward` per segment, last logits only."""

    def __init__(self, model_dir: Path, threads: int):
        import torch

        from infini_onnx.model import InfiniLlamaForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = InfiniLlamaForCausalLM.from_pretrained(model_dir)
        self.state = self.model.new_state()
        self.chunk = self.model.config.segment_len
        self.params = sum(p.numel() for p in self.model.parameters())

    def reset(self) -> None:
        self.state = self.model.new_state()

    def ingest(self, ids: np.ndarray) -> None:
        with self.torch.inference_mode():
            _, self.state = self.model(
                self.torch.from_numpy(ids[None]), self.state, last_logits_only=True
            )

    def decode(self, tokens: int) -> list[float]:
        bos = self.torch.tensor([[self.model.config.bos_token_id]])
        generator = self.model.generate(bos, tokens, self.state)  # one forward per token
        return time_calls(lambda: next(generator), tokens)


class InfiniTransformerPytorch:
    """`infini-transformer-pytorch` (lucidrains), delta rule, sized to a parameter budget.

    Ingest is its documented segment call (`return_new_memories=True`, logits for every
    position: it has no option for fewer); decoding passes its growing per-layer KV cache.
    """

    def __init__(self, kwargs: dict, chunk: int, threads: int, seed: int = 0):
        import torch
        from infini_transformer_pytorch import InfiniTransformer

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        self.model = InfiniTransformer(**kwargs).eval()
        self.memories = None
        self.chunk = chunk
        self.params = sum(p.numel() for p in self.model.parameters())

    def reset(self) -> None:
        self.memories = None

    def ingest(self, ids: np.ndarray) -> None:
        with self.torch.inference_mode():
            out = self.model(
                self.torch.from_numpy(ids[None]),
                past_memories=self.memories,
                return_new_memories=True,
            )
        self.memories = out.past_memories

    def decode(self, tokens: int) -> list[float]:
        cache, token = None, [0]

        def step() -> None:
            nonlocal cache
            with self.torch.inference_mode():
                out = self.model(
                    self.torch.tensor([token]), past_memories=self.memories, cached_kv=cache
                )
            cache = out.cached_kvs
            token[0] = int(out.logits[0, -1].argmax())

        return time_calls(step, tokens)


class OrtFullAttention:
    """The full-attention Llama graph (see llama.py) with its growing KV cache, in ORT."""

    def __init__(self, onnx_path: Path, config, threads: int):
        import onnxruntime as ort

        from infini_onnx.bench.llama import cache_names
        from infini_onnx.runtime import session_options

        self.session = ort.InferenceSession(
            str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.names = cache_names(config.num_hidden_layers, "past_key_values")
        self.shape = (1, config.num_key_value_heads, 0, config.head_dim)  # per layer, K or V
        self.chunk = config.segment_len
        self.bos = config.bos_token_id
        self.params = 0  # set by the caller
        self.reset()

    def reset(self) -> None:
        self.cache = [np.zeros(self.shape, np.float32)] * len(self.names)

    def fill(self, tokens: int, seed: int = 0) -> None:
        """A cache as after `tokens` tokens, of random values (for positions beyond ingest)."""
        rng = np.random.default_rng(seed)
        shape = (*self.shape[:2], tokens, self.shape[3])
        self.cache = [rng.standard_normal(shape, dtype=np.float32) for _ in self.names]

    def _run(self, ids: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list]:
        logits, *present = self.session.run(
            None, {"input_ids": ids[None], **dict(zip(self.names, cache))}
        )
        return logits, present

    def ingest(self, ids: np.ndarray) -> None:
        _, self.cache = self._run(ids.astype(np.int64), self.cache)

    def decode(self, tokens: int) -> list[float]:
        cache, token = self.cache, np.array([self.bos], np.int64)

        def step() -> None:
            nonlocal cache, token
            logits, cache = self._run(token, cache)
            token = logits[0, -1].argmax(keepdims=True).astype(np.int64)

        return time_calls(step, tokens)


class OptimumLlama:
    """The full-attention Llama as users run it: optimum's ORTModelForCausalLM (see
    optimum_llama.py) with its defaults, its KV cache and a growing attention mask; ingest in
    chunks of the segment length (chunked prefill), decode one token per call."""

    def __init__(self, onnx_dir: Path, config, threads: int):
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        from infini_onnx.runtime import session_options

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = ORTModelForCausalLM.from_pretrained(
            onnx_dir, session_options=session_options(threads), use_cache=True
        )
        self.shape = (1, config.num_key_value_heads, 0, config.head_dim)  # per layer, K or V
        self.layers = config.num_hidden_layers
        self.chunk = config.segment_len
        self.bos = config.bos_token_id
        self.params = 0  # set by the caller
        self.reset()

    def reset(self) -> None:
        self.past, self.seen = None, 0

    def fill(self, tokens: int, seed: int = 0) -> None:
        """A cache as after `tokens` tokens, of random values (for positions beyond ingest)."""
        g = self.torch.Generator().manual_seed(seed)
        shape = (*self.shape[:2], tokens, self.shape[3])
        random = lambda: self.torch.randn(shape, generator=g)  # noqa: E731
        self.past = tuple((random(), random()) for _ in range(self.layers))
        self.seen = tokens

    def forward(self, ids, past, seen: int):
        """One call: ids [1, T] after `seen` tokens with cache `past` -> (logits, cache)."""
        mask = self.torch.ones(1, seen + ids.shape[1], dtype=self.torch.long)
        with self.torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, past_key_values=past)
        return out.logits, out.past_key_values

    def ingest(self, ids: np.ndarray) -> None:
        _, self.past = self.forward(self.torch.from_numpy(ids[None]), self.past, self.seen)
        self.seen += len(ids)

    def decode(self, tokens: int) -> list[float]:
        past, seen, token = self.past, self.seen, self.torch.tensor([[self.bos]])

        def step() -> None:
            nonlocal past, seen, token
            logits, past = self.forward(token, past, seen)
            seen += 1
            token = logits[:, -1:].argmax(-1)

        return time_calls(step, tokens)


def batch_decode(
    onnx_path: Path, threads: int, streams: int, tokens: int, vocab: int, prefix: int = 0
) -> dict:
    """Decode `streams` streams together (StreamBatch: one graph call per step for all of
    them), each after `prefix` (default: one segment) of its own random tokens; times `tokens`
    steps."""
    from infini_onnx.runtime import InfiniModel, Stream, StreamBatch

    model = InfiniModel(onnx_path, threads=threads)
    rng = np.random.default_rng(streams)
    members = []
    for _ in range(streams):
        stream = Stream(model)
        stream.feed(rng.integers(0, vocab, prefix or model.config.segment_len))
        members.append(stream)
    steps = StreamBatch(members).generate(max_new_tokens=tokens + 2, temperature=0)
    next(steps), next(steps)  # warm-up
    times = time_calls(lambda: next(steps), tokens)
    return {"streams": streams, "step_ms": [t * 1e3 for t in times]}


def itp_kwargs(config, params: int) -> dict:
    """infini-transformer-pytorch settings of the same width, depth, heads, head_dim and memory
    rule as `config`, its feed-forward width chosen so the parameter count is closest to
    `params` (it has no grouped key/value heads, so its attention is larger)."""
    D, L, H, d, V = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.head_dim,
        config.vocab_size,
    )
    rotary = d // 2  # rotary-embedding-torch keeps its frequencies as a parameter
    attention = D + 3 * D * H * d + H * d * D + H + rotary
    fixed = V * D + D + D * V + V + L * (attention + 2 * D)  # + feed-forward norm, out bias

    def count(inner: int) -> int:
        return fixed + L * (D * 2 * inner + 2 * inner + inner * D)

    inner = max(range(1, 8 * D), key=lambda i: -abs(count(i) - params))
    return dict(
        num_tokens=V,
        dim=D,
        depth=L,
        dim_head=d,
        heads=H,
        ff_mult=(inner + 0.5) * 3 / (2 * D),  # int(ff_mult * D * 2 / 3) == inner
        use_mem_delta_rule=config.memory_update == "delta",
    )


class GenAI:
    """onnxruntime-genai running its model builder's graph of the same weights (full
    attention: GroupQueryAttention over a cache of `max_length` positions, MatMulNBits for
    int4): its Generator, greedy."""

    def __init__(self, model_dir: Path, threads: int, max_length: int, chunk: int):
        import json

        import onnxruntime_genai as og

        config = og.Config(str(model_dir))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.og, self.model = og, og.Model(config)
        self.max_length, self.chunk = max_length, chunk
        self.params = 0  # set by the caller
        self.reset()

    def reset(self) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        self.generator = self.og.Generator(self.model, params)
        self.seen = 0

    def ingest(self, ids: np.ndarray) -> None:
        self.generator.append_tokens(ids.astype(np.int32))
        self.seen += len(ids)

    def decode(self, tokens: int) -> list[float]:
        """Step times of `tokens` greedy steps; the stream is read again from the start
        afterwards (GenAI cannot fork a generator: rewind_to drops the decoded tokens)."""
        times = time_calls(self.generator.generate_next_token, tokens)
        self.generator.rewind_to(self.seen)
        return times


class LlamaCpp:
    """llama.cpp through llama-cpp-python on a GGUF of the same weights (full attention, its
    KV cache of n_ctx positions): `eval` of chunks, then one token per call."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int, chunk: int):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=chunk,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.chunk = chunk
        self.params = 0  # set by the caller
        self.reset()

    def reset(self) -> None:
        self.llm.reset()

    def ingest(self, ids: np.ndarray) -> None:
        self.llm.eval(ids.tolist())

    def decode(self, tokens: int) -> list[float]:
        """Step times of `tokens` single-token evals (of one fixed token: the work does not
        depend on it), then back to the ingested stream (the cache is truncated to it)."""
        seen = self.llm.n_tokens
        times = time_calls(lambda: self.llm.eval([ord("a")]), tokens)
        self.llm.n_tokens = seen
        self.llm._ctx.kv_cache_seq_rm(-1, seen, -1)
        return times
