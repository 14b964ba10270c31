"""Per-row decoding inside one batched `generate` call: sampling, seeds, stopping, log-probs.

`generate` applies one set of sampling settings to a whole batch; these hooks give every row its
own instead, so requests with different parameters can share a batch and a seeded request samples
the same tokens whatever it is batched with.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from charter_transformers.engine import GenerationJob


def row_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request seeded with `seed` (distinct, stable streams)."""
    return (seed * 1_000_003 + index * 0x9E3779B9 + 1) % (2**63)


class RowStopper:
    """Per-row stopping: end-of-sequence, stop strings or the row's own token limit.

    `done_at[i]` is the number of tokens row i produced; `reasons[i]` why it stopped.
    """

    def __init__(
        self,
        jobs: Sequence[GenerationJob],
        prompt_len: int,
        eos: frozenset[int],
        tokenizer: Any,
        tokenizer_lock: threading.RLock,
    ) -> None:
        self.jobs = jobs
        self.prompt_len = prompt_len
        self.eos = eos
        self.tokenizer = tokenizer
        self.tokenizer_lock = tokenizer_lock
        self.done_at: list[int | None] = [None] * len(jobs)
        self.reasons: list[str | None] = [None] * len(jobs)
        longest = max((len(s) for job in jobs for s in job.stop), default=0)
        # A stop string of k characters spans at most k tokens, plus one for a partial UTF-8 piece.
        self.tail = longest + 2

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        import torch

        steps = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].tolist()
        tails: list[list[int]] | None = None
        for i, job in enumerate(self.jobs):
            if self.done_at[i] is not None:
                continue
            if last[i] in self.eos:
                self.done_at[i], self.reasons[i] = steps, "eos"
                continue
            if job.stop:
                if tails is None:
                    start = max(self.prompt_len, input_ids.shape[1] - self.tail)
                    tails = input_ids[:, start:].tolist()
                with self.tokenizer_lock:
                    text = self.tokenizer.decode(tails[i], skip_special_tokens=True)
                if any(s in text for s in job.stop):
                    self.done_at[i], self.reasons[i] = steps, "stop"
                    continue
            if steps >= job.max_tokens:
                self.done_at[i], self.reasons[i] = steps, "length"
        done = [d is not None for d in self.done_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class RowSampler:
    """A logits processor that picks every row's next token itself and returns a one-hot score.

    `generate` runs greedy (argmax), so it takes exactly the token chosen here: argmax for rows at
    temperature 0, else a draw with the row's temperature/top-k/top-p from the row's generator. It
    also records log-probabilities (log-softmax of the scores it receives: the model's logits after
    any processors the model's own generation config adds) and the top alternatives.
    """

    def __init__(
        self, jobs: Sequence[GenerationJob], seeds: Sequence[int], device: torch.device, stopper: RowStopper
    ):
        import torch

        self.jobs = jobs
        self.stopper = stopper
        self.sampled = [i for i, job in enumerate(jobs) if job.temperature > 0]
        self.generators: dict[int, torch.Generator] = {}
        for i in self.sampled:
            gen = torch.Generator(device=device)
            gen.manual_seed(seeds[i])
            self.generators[i] = gen
        self.with_logprobs = [i for i, job in enumerate(jobs) if job.logprobs is not None]
        self.lp_index = torch.tensor(self.with_logprobs, dtype=torch.long, device=device)
        self.top_k = max((jobs[i].logprobs or 0 for i in self.with_logprobs), default=0)
        self.chosen: list[torch.Tensor] = []
        self.chosen_lp: list[torch.Tensor] = []
        self.top_values: list[torch.Tensor] = []
        self.top_ids: list[torch.Tensor] = []

    def _draw(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        import torch

        job = self.jobs[i]
        logits = logits / job.temperature
        if 0 < job.top_k < logits.shape[-1]:
            kth = torch.topk(logits, job.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if job.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= job.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generators[i])[0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        if not self.sampled and not self.with_logprobs:
            return scores  # all greedy, nothing to record: generate's own argmax is the answer
        scores_f = scores.float()
        chosen = scores_f.argmax(dim=-1)
        for i in self.sampled:
            if self.stopper.done_at[i] is None:
                chosen[i] = self._draw(i, scores_f[i])
        if self.with_logprobs:
            logprobs = torch.log_softmax(scores_f.index_select(0, self.lp_index), dim=-1)
            self.chosen_lp.append(logprobs.gather(1, chosen.index_select(0, self.lp_index)[:, None])[:, 0])
            if self.top_k:
                values, ids = torch.topk(logprobs, self.top_k, dim=-1)
                self.top_values.append(values)
                self.top_ids.append(ids)
        out = torch.full_like(scores_f, float("-inf"))
        out.scatter_(1, chosen[:, None], 0.0)
        return out  # type: ignore[return-value]
