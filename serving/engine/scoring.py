"""Label scoring: log-probabilities of given continuations, computed once per shared prefix.

Two paths: ``_prompt_logprobs`` (general, every token's score, what ``/v1/completions``'
``prompt_logprobs`` needs) and ``_score_sums`` (one forward pass of only what is new, for
classification); tests hold them equal within 1e-4.
"""

from __future__ import annotations

import torch

from serving.engine.kv_cache import Cache, Prefix, new_cache, shared_length, slots
from serving.engine.loras import LoraSlots
from serving.inference_types import PromptScores, TokenScore

MIN_REUSE = 16  # shorter shared starts are recomputed


class Scoring(LoraSlots):
    """Scoring jobs, run on the scheduler thread."""

    def _prompt_logprobs(
        self,
        prefix: list[int],
        continuations: list[list[int]],
        adapter: str,
        top: int,
        with_prefix: bool,
    ) -> PromptScores:
        n = len(continuations)
        cache, first, scores = self._scored_prefix(prefix, adapter, top, with_prefix)
        result = PromptScores(prefix=scores)
        width = max((len(c) for c in continuations), default=0)
        if n == 0 or width == 0:
            result.rows = [[] for _ in continuations]
            result.next_token = [int(torch.argmax(first).item())] * n
            return result
        for layer in slots(cache):
            keys, values = layer.kv()
            layer.set(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), width)
        ids = torch.full((n, width), self._pad_id(), dtype=torch.long)
        cmask = torch.zeros((n, len(prefix) + width), dtype=torch.long)
        cmask[:, : len(prefix)] = 1
        for row, cont in enumerate(continuations):
            if cont:
                ids[row, : len(cont)] = torch.tensor(cont)
                cmask[row, len(prefix) : len(prefix) + len(cont)] = 1
        positions = torch.arange(len(prefix), len(prefix) + width).unsqueeze(0).expand(n, -1)
        logits = self._forward(ids, cmask, positions, cache, [adapter] * n, False)
        # the logits that predict continuation token j: the prefix's last for j=0, else step j-1
        predict = torch.cat([first.expand(n, 1, -1), logits], dim=1)
        for row, cont in enumerate(continuations):
            lp = torch.log_softmax(predict[row, : len(cont)], dim=-1)
            result.rows.append([_score(lp[j], token, top) for j, token in enumerate(cont)])
            result.next_token.append(int(torch.argmax(predict[row, len(cont)]).item()))
        return result

    def _scored_prefix(
        self, prefix: list[int], adapter: str, top: int, with_prefix: bool
    ) -> tuple[Cache, torch.Tensor, list[TokenScore]]:
        """The prompt's KV cache, the logits after its last token and (``with_prefix``) the
        score of every prompt token after the first.

        What the adapter's previous prompt shares with this one is not computed again (its KV
        cache and, when kept with the same ``top``, its tokens' scores); the last prompt token
        always is, as its logits start the continuations. This prompt is then remembered.
        """
        cached = self._prefixes.get(adapter) if self.prefix_caching else None
        reuse = 0
        if cached is not None:
            reuse = min(shared_length(cached.ids, prefix), len(prefix) - 1)
            if with_prefix and (cached.scores is None or cached.top != top):
                reuse = 0
            elif with_prefix:  # a kept score of token i needs tokens 0..i shared
                reuse = min(reuse, shared_length(cached.ids, prefix) - 1)
        if reuse < MIN_REUSE:
            reuse = 0
        cache = new_cache(self.num_layers)
        fresh = prefix[reuse:]
        if reuse:
            assert cached is not None
            for layer, (keys, values) in zip(slots(cache), cached.kv, strict=True):
                layer.set(keys[:, :, :reuse], values[:, :, :reuse], len(fresh))
            self.metrics.prefix_tokens_reused += reuse
            self.metrics.prefix_hits.inc(reuse)
        ids = torch.tensor([fresh], dtype=torch.long)
        mask = torch.ones((1, len(prefix)), dtype=torch.long)
        positions = torch.arange(reuse, len(prefix)).unsqueeze(0)
        plogits = self._forward(ids, mask, positions, cache, [adapter], not with_prefix)[0]
        first = plogits[-1]
        scores: list[TokenScore] = []
        if with_prefix:
            if reuse:
                assert cached is not None
                assert cached.scores is not None
                scores = cached.scores[:reuse]  # tokens 1..reuse: predicted in the shared part
            lp = torch.log_softmax(plogits[:-1], dim=-1)
            scores += [_score(lp[j], prefix[reuse + j + 1], top) for j in range(len(fresh) - 1)]
        kv = [(k.clone(), v.clone()) for k, v in (layer.kv() for layer in slots(cache))]
        self._prefixes[adapter] = Prefix(
            list(prefix), kv, first, scores if with_prefix else None, top
        )
        return cache, first, scores

    def _score_sums(
        self, prefix: list[int], continuations: list[list[int]], adapter: str
    ) -> list[float]:
        """Label scoring in one forward pass over a single row, with nothing computed twice.

        A ticket's scoring is small enough (a few dozen tokens) that the fixed cost of a forward
        pass and the padding of a batch dominate, so the row holds only what is not known yet:
        the part of the prompt not shared with this adapter's previous scored prompt (tickets of
        a dataset share its system prompt; that prompt's KV cache is kept, like vLLM's prefix
        caching), then the continuations as a token tree (labels sharing a first word share its
        tokens; a continuation's last token is never fed, as nothing is predicted from it),
        under a 4-D attention mask that lets every token see the prompt and its own ancestors.
        The vocabulary projection runs only where a log-probability is read. A LoRA adapter
        runs as merged weights (``_merged_adapter``). The results equal ``prompt_logprobs``'
        up to float rounding (tests/serving/test_engine.py checks 1e-4).
        """
        if not continuations:
            return []
        nodes: dict[tuple[int, ...], int] = {}  # a continuation prefix -> its position in the row
        parents: list[int] = []
        tokens: list[int] = []
        for cont in continuations:
            for depth in range(1, len(cont)):
                path = tuple(cont[:depth])
                if path not in nodes:
                    nodes[path] = len(tokens)
                    parents.append(nodes[path[:-1]] if depth > 1 else -1)
                    tokens.append(cont[depth - 1])
        with self._merged_adapter(adapter) as run_as:
            cached = self._prefixes.get(adapter)
            reuse = 0
            if cached is not None:
                limit = min(len(cached.ids), len(prefix))
                while reuse < limit and cached.ids[reuse] == prefix[reuse]:
                    reuse += 1
                if cached.ids != prefix:
                    reuse = min(reuse, len(prefix) - 1)  # the prompt's last logits are needed
            fresh = prefix[reuse:]
            if not fresh and not tokens:
                assert cached is not None
                first = cached.last_logits
                logits = first[:0]
            else:
                first, logits = self._tree_forward(
                    prefix, reuse, cached, tokens, parents, run_as, adapter
                )
        first_lp = torch.log_softmax(first, dim=-1)
        node_lp = torch.log_softmax(logits, dim=-1)
        sums = []
        for cont in continuations:
            total = 0.0
            for depth, token in enumerate(cont):
                row = first_lp if depth == 0 else node_lp[nodes[tuple(cont[:depth])]]
                total += float(row[token])
            sums.append(total)
        return sums

    def _tree_forward(
        self,
        prefix: list[int],
        reuse: int,
        cached: Prefix | None,
        tokens: list[int],
        parents: list[int],
        run_as: str,
        adapter: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass of ``_score_sums``: logits at the prompt's last token and at every
        tree token; keeps the prompt's KV cache for ``adapter``'s next request."""
        fresh = prefix[reuse:]
        cache = new_cache(self.num_layers)
        if reuse:
            assert cached is not None
            for layer, (keys, values) in zip(slots(cache), cached.kv, strict=True):
                layer.set(keys[:, :, :reuse], values[:, :, :reuse], len(fresh) + len(tokens))
        width = len(fresh) + len(tokens)
        total = reuse + width
        allowed = torch.zeros((width, total), dtype=torch.bool)
        allowed[:, :reuse] = True
        allowed[: len(fresh), reuse : reuse + len(fresh)] = torch.ones(
            (len(fresh), len(fresh)), dtype=torch.bool
        ).tril()
        allowed[len(fresh) :, : len(prefix)] = True
        positions = list(range(reuse, len(prefix)))
        for i, parent in enumerate(parents):
            row = len(fresh) + i
            allowed[row, len(prefix) + i] = True
            depth = 1
            while parent >= 0:
                allowed[row, len(prefix) + parent] = True
                parent, depth = parents[parent], depth + 1
            positions.append(len(prefix) + depth - 1)
        mask = torch.zeros((1, 1, width, total), dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        keep = torch.tensor([len(fresh) - 1] if fresh else [], dtype=torch.long)
        keep = torch.cat([keep, torch.arange(len(fresh), width)])
        logits = self._forward(
            torch.tensor([fresh + tokens], dtype=torch.long),
            mask,
            torch.tensor([positions], dtype=torch.long),
            cache,
            [run_as],
            keep.to(self.device),
            quick_base=True,
        )[0]
        if fresh:
            first, rest = logits[0], logits[1:]
            kv = [(k[:, :, : len(prefix)], v[:, :, : len(prefix)]) for k, v in (
                layer.kv() for layer in slots(cache))]  # fmt: skip
            self._prefixes[adapter] = Prefix(list(prefix), kv, first)
        else:
            assert cached is not None
            first, rest = cached.last_logits, logits
        return first, rest


def _score(logprobs: torch.Tensor, token: int, top: int) -> TokenScore:
    value = logprobs[token]
    rank = int((logprobs > value).sum().item()) + 1
    alts: tuple[tuple[int, float], ...] = ()
    if top:
        values, idx = torch.topk(logprobs, top)
        alts = tuple(zip(idx.tolist(), values.tolist(), strict=True))
    return TokenScore(token, float(value), rank, alts)
