"""lm-evaluation-harness adapter: the model name `lmforge` for any lmforge checkpoint.

    lmforge-lm-eval --model lmforge --model_args checkpoint=DIR --tasks hellaswag
    python -m lmforge.tasks.evaluate.lm_eval_model --model lmforge --model_args checkpoint=DIR --device cuda ...

lm-eval 0.4.x finds models only through `@register_model` at import time (it has no entry-point
discovery for models), so the commands above import this module and then run lm-eval's own CLI
with the same arguments; in Python, `import lmforge.tasks.evaluate.lm_eval_model` before `simple_evaluate`.
Scoring reuses lmforge's batched continuation scorer; every text starts after `<|endoftext|>`,
as documents do in training. Needs the `lm-eval` extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmforge.model.checkpoint import load_model
from lmforge.model.runtime import resolve_device
from lmforge.tasks.evaluate.checkpoint import continuation_scores
from lmforge.tasks.generate import checkpoint_tokenizer_file, stream_generate
from lmforge.tasks.tokens.tokenizer import load_tokenizer, special_token_ids, to_valid_utf8


@register_model("lmforge")
class LmforgeLM(LM):
    """An lmforge checkpoint as an lm-eval `LM`: log-likelihoods and greedy generation."""

    def __init__(
        self,
        checkpoint: str,
        tokenizer: str | None = None,
        device: str | None = "auto",
        batch_size: int | str | None = 16,
        **ignored: Any,  # lm-eval passes max_batch_size and similar to every model
    ) -> None:
        super().__init__()
        if not Path(checkpoint).is_dir():
            raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory")
        self.tokenizer = load_tokenizer(checkpoint_tokenizer_file(checkpoint, tokenizer))
        self.model = load_model(checkpoint, device=resolve_device(device or "auto")).eval()
        self.max_length = self.model.config.max_seq_len
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> 16
        special = special_token_ids(self.tokenizer)
        self.eot_id, self.pad_id = special.eot_id, special.pad_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(to_valid_utf8(text)).ids

    def context_and_continuation(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of `<|endoftext|>` + context + continuation (its end, if longer than the
        model's context) and the number of them that are context."""
        # lm-eval's rule: trailing spaces of the context belong to the continuation's first token.
        stripped = context.rstrip(" ")
        continuation = context[len(stripped) :] + continuation
        context_ids = [self.eot_id] + self.encode(stripped)
        continuation_ids = self.encode(continuation)[-self.max_length :]
        tokens = (context_ids + continuation_ids)[-(self.max_length + 1) :]
        return tokens, len(tokens) - len(continuation_ids)

    def score(self, requests: Iterable[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        requests = list(requests)
        return continuation_scores(
            self.model,
            [tokens for tokens, _ in requests],
            [context for _, context in requests],
            self.pad_id,
            self.batch_size,
        )

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy?) for each request's (context, continuation)."""
        return self.score(self.context_and_continuation(*request.args) for request in requests)

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Log-likelihood of each whole text, in lm-eval's rolling windows of the model's context
        length: every token is scored exactly once, the first after `<|endoftext|>`."""
        windows, owners = [], []
        for index, request in enumerate(requests):
            for context, predicted in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    self.encode(request.args[0]), self.eot_id, self.max_length, context_len=1
                ),
            ):
                windows.append((context + predicted, len(context)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (log_prob, _) in zip(owners, self.score(windows), strict=True):
            totals[owner] += log_prob
        return totals

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy continuation of each context, cut before the first `until` string."""
        outputs = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = ""
            for piece in stream_generate(
                self.model,
                self.tokenizer,
                context,
                max_new_tokens=int(options.get("max_gen_toks", 256)),
                temperature=0.0,
                top_k=None,
            ):
                text += piece
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs


def main() -> None:
    """lm-eval's command line, with the `lmforge` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
