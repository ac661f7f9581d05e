"""Label scoring: log-probabilities of given continuations, computed once per shared prefix.

Two kinds of answer: every token's score (what ``/v1/completions``' ``prompt_logprobs`` needs,
``_prompt_logprobs``) and summed label scores (classification, ``_score_sums``). With
``fast_scoring`` (the default) both run one forward pass over a single row of only what is new
(``_tree_forward``); without it, ``_general_prompt_logprobs`` pads one row per continuation
behind the prompt's KV cache, the plain way that tests hold the fast paths equal to (1e-4).
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
        """Every continuation token's score, (``with_prefix``) every prompt token's after the
        first, and each sequence's greedy next token.

        The fast path feeds the continuations whole as a token tree after the part of the prompt
        not cached for ``adapter`` (``_tree_forward``), projects to the vocabulary only at the
        positions read (the prompt's only with ``with_prefix``) and scores them all in one
        batch. The prompt's scores are kept with its KV cache, so a dataset's system prompt is
        scored once.
        """
        if not self.fast_scoring:
            return self._general_prompt_logprobs(prefix, continuations, adapter, top, with_prefix)
        nodes, parents, tokens = _token_tree(continuations, whole=True)
        with self._merged_adapter(adapter) as run_as:
            cached = self._prefixes.get(adapter) if self.prefix_caching else None
            reuse = _reusable(cached, prefix, top if with_prefix else None)
            if reuse:
                self.metrics.prefix_tokens_reused += reuse
                self.metrics.prefix_hits.inc(reuse)
            if reuse == len(prefix) and not tokens:
                fresh_logits, logits, kv = torch.empty(0), torch.empty(0), None
            else:
                fresh_logits, logits, kv = self._tree_forward(
                    prefix, reuse, cached, tokens, parents, run_as, keep_prompt=with_prefix
                )
        if kv is None:
            assert cached is not None
            first = cached.last_logits
        else:
            first = fresh_logits[-1].clone()  # kept with the prompt: not a view of every row
        result = PromptScores()
        if with_prefix:
            kept = cached.scores[: min(reuse, len(prefix) - 1)] if cached and cached.scores else []
            fresh_scores = _scores(fresh_logits[:-1], prefix[reuse + 1 :], top) if kv else []
            result.prefix = kept + fresh_scores
        if kv is not None:
            scores = list(result.prefix) if with_prefix else None
            self._prefixes[adapter] = Prefix(list(prefix), kv, first, scores, top)
        # row 0 of ``predict`` follows the prompt, row i + 1 follows tree token i
        predict = torch.cat([first.unsqueeze(0), logits]) if tokens else first.unsqueeze(0)
        at = [0 if depth == 0 else nodes[tuple(cont[:depth])] + 1
              for cont in continuations for depth in range(len(cont))]  # fmt: skip
        flat = _scores(predict[at], [t for cont in continuations for t in cont], top)
        ends = [nodes[tuple(cont)] + 1 if cont else 0 for cont in continuations]
        result.next_token = torch.argmax(predict[ends], dim=-1).tolist()
        done = 0
        for cont in continuations:
            result.rows.append(flat[done : done + len(cont)])
            done += len(cont)
        return result

    def _general_prompt_logprobs(
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
        nodes, parents, tokens = _token_tree(continuations, whole=False)
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
                fresh_logits, logits, kv = self._tree_forward(
                    prefix, reuse, cached, tokens, parents, run_as
                )
                if kv is None:
                    assert cached is not None
                    first = cached.last_logits
                else:
                    first = fresh_logits[-1]
                    self._prefixes[adapter] = Prefix(list(prefix), kv, first)
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
        keep_prompt: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """One forward pass of the prompt's uncached part and a token tree: the logits at the
        prompt's last token (at each uncached prompt token with ``keep_prompt``), at every tree
        token, and the prompt's KV cache (None when the whole prompt came from ``cached``)."""
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
        start = 0 if keep_prompt else max(len(fresh) - 1, 0)
        logits = self._forward(
            torch.tensor([fresh + tokens], dtype=torch.long),
            mask,
            torch.tensor([positions], dtype=torch.long),
            cache,
            [run_as],
            torch.arange(start, width).to(self.device),
            quick_base=True,
        )[0]
        if not fresh:
            return logits[:0], logits, None
        kept = len(fresh) - start
        kv = [(k[:, :, : len(prefix)], v[:, :, : len(prefix)]) for k, v in (
            layer.kv() for layer in slots(cache))]  # fmt: skip
        return logits[:kept], logits[kept:], kv


def _token_tree(
    continuations: list[list[int]], whole: bool
) -> tuple[dict[tuple[int, ...], int], list[int], list[int]]:
    """The continuations as a token tree (continuations sharing a start share its tokens):
    each path's position in the tree, each token's parent (-1 at the root) and the tokens.
    A continuation's last token is left out unless ``whole`` (nothing is read after it then)."""
    nodes: dict[tuple[int, ...], int] = {}
    parents: list[int] = []
    tokens: list[int] = []
    for cont in continuations:
        for depth in range(1, len(cont) + (1 if whole else 0)):
            path = tuple(cont[:depth])
            if path not in nodes:
                nodes[path] = len(tokens)
                parents.append(nodes[path[:-1]] if depth > 1 else -1)
                tokens.append(cont[depth - 1])
    return nodes, parents, tokens


def _reusable(cached: Prefix | None, prefix: list[int], top: int | None) -> int:
    """How many of ``prefix``'s tokens ``cached`` provides (KV cache and, unless ``top`` is
    None, the scores of the tokens after the first, kept with the same ``top``). Only a prompt
    identical to the cached one is reused whole: the last token's logits start the answers."""
    if cached is None:
        return 0
    if top is not None and (cached.scores is None or cached.top != top):
        return 0
    shared = shared_length(cached.ids, prefix)
    if cached.ids == prefix:
        return shared
    if top is not None:  # the kept score of token ``reuse`` needs tokens 0..reuse shared
        return max(0, min(shared - 1, len(prefix) - 1))
    return min(shared, len(prefix) - 1)


def _scores(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenScore]:
    """Each row's score of its token (row i of ``logits`` predicts ``tokens[i]``): vLLM's
    log-probability, rank (counted among the log-probabilities, as vLLM does, so that values
    rounded equal tie) and ``top`` alternatives, batched over the rows."""
    if not tokens:
        return []
    ids = torch.tensor(tokens, dtype=torch.long, device=logits.device).unsqueeze(1)
    logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    chosen = logprobs.gather(1, ids)
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    values = chosen.squeeze(1).tolist()
    alts: list[tuple[tuple[int, float], ...]] = [()] * len(tokens)
    if top:
        best, idx = torch.topk(logprobs, top, dim=-1)
        alts = [tuple(zip(i, v, strict=True)) for i, v in zip(
            idx.tolist(), best.tolist(), strict=True)]  # fmt: skip
    return [
        TokenScore(token, value, rank, alt)
        for token, value, rank, alt in zip(tokens, values, ranks, alts, strict=True)
    ]


def _score(logprobs: torch.Tensor, token: int, top: int) -> TokenScore:
    value = logprobs[token]
    rank = int((logprobs > value).sum().item()) + 1
    alts: tuple[tuple[int, float], ...] = ()
    if top:
        values, idx = torch.topk(logprobs, top)
        alts = tuple(zip(idx.tolist(), values.tolist(), strict=True))
    return TokenScore(token, float(value), rank, alts)
