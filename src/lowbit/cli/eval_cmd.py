"""``lowbit eval``: perplexity of a language model, or embedding fidelity of an encoder
against a reference, on a text file or the built-in evaluation text."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from lowbit.cli.output import print_json, print_table
from lowbit.errors import InvalidInputError


class EvalTask(StrEnum):
    perplexity = "perplexity"
    embedding_fidelity = "embedding-fidelity"


_BUILTIN_TEXT = "pydoc_data.topics evaluation split"


def _text(path: Path | None) -> tuple[str, str]:
    from lowbit.eval.text import evaluation_text, read_text

    if path is None:
        return evaluation_text(), _BUILTIN_TEXT
    return read_text(path), str(path)


def _adds_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer starts every text with it (llama.cpp's add_bos)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", verbose=False)["input_ids"] if tokenizer is not None else []
    return bos if bos is not None and ids and ids[0] == bos else None


def _perplexity(
    model: str, text: str, ctx: int, stride: int, max_tokens: int | None, scoring: str
) -> dict[str, Any]:
    from lowbit.eval.perplexity import llama_cpp_perplexity, perplexity
    from lowbit.io.hf import load_model
    from lowbit.progress import status

    with status(f"loading {model}"):
        # A llama GGUF is measured as stored: its Q8_0/Q4_0/Q4_1 weights on lowbit's kernels.
        loaded = load_model(model, task="causal-lm", gguf_weights="lowbit")
    if scoring == "llama.cpp":
        result = llama_cpp_perplexity(
            loaded.model, loaded.tokenizer, text, ctx=ctx, max_tokens=max_tokens,
            bos_id=_adds_bos(loaded.tokenizer),
        )  # fmt: skip
    else:
        result = perplexity(
            loaded.model, loaded.tokenizer, text, ctx=ctx, stride=stride, max_tokens=max_tokens
        )
    return {"perplexity": result.ppl, "n_tokens": result.n_tokens, "nll": result.nll}


def _embedding_fidelity(
    model: str, reference: str, text: str, chunks: int, words: int
) -> dict[str, Any]:
    from lowbit.eval.embedding import embed, embedding_fidelity
    from lowbit.eval.text import text_chunks
    from lowbit.io.hf import load_model
    from lowbit.progress import status

    texts = text_chunks(text, chunks, words)
    embeddings = []
    for source in (reference, model):
        with status(f"loading {source}"):
            loaded = load_model(source, task="embedding")
        embeddings.append(embed(loaded.model, loaded.tokenizer, texts))
        del loaded  # one model in memory at a time
    return {**embedding_fidelity(*embeddings), "n_texts": len(texts)}


def eval_model(
    model: Annotated[
        str,
        typer.Argument(
            help="The model to measure: a Hugging Face model folder (config.json + "
            "safetensors), a .gguf file, or a hub id (needs network access)."
        ),
    ],
    task: Annotated[
        EvalTask,
        typer.Option(
            "--task",
            help="perplexity (causal LM) or embedding-fidelity (encoder vs --reference).",
        ),
    ],
    text: Annotated[
        Path | None,
        typer.Option(
            "--text",
            help="A UTF-8 text file to evaluate on. Default: the fixed evaluation split of "
            "Python's pydoc_data.topics documentation (topics sorted by name, second half).",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference", help="embedding-fidelity: the reference (fp32) model to compare to."
        ),
    ] = None,
    ctx: Annotated[int, typer.Option(help="perplexity: tokens per window.")] = 512,
    stride: Annotated[
        int, typer.Option(help="perplexity: tokens between window starts (<= ctx).")
    ] = 512,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="perplexity: score only the first N tokens.")
    ] = None,
    chunks: Annotated[
        int, typer.Option(help="embedding-fidelity: number of passages embedded (at most).")
    ] = 1000,
    words: Annotated[int, typer.Option(help="embedding-fidelity: words per passage.")] = 32,
    scoring: Annotated[
        str,
        typer.Option(
            help="perplexity: 'sliding' (strided windows, every token scored once) or "
            "'llama.cpp' (llama-perplexity's: whole chunks of ctx, second halves scored)."
        ),
    ] = "sliding",
    json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Measure a model: perplexity of a causal LM (strided sliding window), or cosine
    similarity and top-10 retrieval agreement of an encoder's embeddings with a reference's.

    Examples:
      lowbit eval model.gguf --task perplexity --max-tokens 4096
      lowbit eval quantized/ --task embedding-fidelity --reference fp32/
    """
    if task is EvalTask.embedding_fidelity and reference is None:
        raise InvalidInputError(
            "--task embedding-fidelity needs --reference MODEL, the model to compare against"
        )
    content, text_name = _text(text)
    start = time.perf_counter()
    if task is EvalTask.perplexity:
        if scoring not in ("sliding", "llama.cpp"):
            raise InvalidInputError(f"unknown --scoring {scoring!r}; use 'sliding' or 'llama.cpp'")
        document = _perplexity(model, content, ctx, stride, max_tokens, scoring)
        document.update(ctx=ctx, stride=ctx if scoring == "llama.cpp" else stride, scoring=scoring)
    else:
        assert reference is not None
        document = _embedding_fidelity(model, reference, content, chunks, words)
        document["reference"] = reference
    document.update(
        model=model, task=task.value, text=text_name, seconds=time.perf_counter() - start
    )
    if json:
        print_json(document)
        return
    rows = [[k, f"{v:.6g}" if isinstance(v, float) else v] for k, v in document.items()]
    print_table(f"lowbit eval {model}", ["measure", "value"], rows)
