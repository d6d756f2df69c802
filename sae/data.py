"""Text in, packed token batches out.

Documents are packed end to end into full rows of `context_size` tokens (no padding), each token
keeping the id of its document segment; attention never crosses segments (a block-diagonal causal
mask, positions restarting per segment), so a document's activations inside a packed row equal
those of the document run alone. Batches are sized by a token budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from sae.errors import UserError
from sae.io import iter_jsonl

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def _check_txt(path: Path) -> None:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text; re-encode the file as UTF-8") from None


def iter_texts(source: str, text_field: str = "text", split: str = "train",
               limit_docs: int | None = None) -> Iterator[str]:
    """Yield documents from a local .jsonl/.txt/.parquet file (or a folder of them) or a Hugging
    Face dataset id, streamed, through `datasets`. A .txt file is one document per blank-line-separated
    paragraph block; `.jsonl.gz` works too."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files = [p for p in files if _suffix(p) in LOCAL_SUFFIXES]
        if not files:
            raise UserError(f"no .jsonl, .txt or .parquet files in {source}")
        kind = LOCAL_SUFFIXES[_suffix(files[0])]
        for p in files:
            if _suffix(p) == ".jsonl" and not p.name.endswith(".gz"):
                for _ in iter_jsonl(p, (text_field,), "set data.text_field to the field holding the text"):
                    pass  # datasets' own error names no file or line
            elif kind == "text":
                _check_txt(p)
        if kind == "text":
            stream = _iter_txt(files)
        else:
            ds = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train", streaming=True)
            stream = (row[text_field] for row in ds)
    elif source.startswith((".", "/", "~")):
        raise UserError(f"dataset {source} does not exist; give a local .jsonl/.txt/.parquet path or a hub id")
    else:
        try:
            ds = datasets.load_dataset(source, split=split, streaming=True)
        except Exception as e:
            raise UserError(f"could not open dataset {source!r}: {str(e).splitlines()[0][:200]}") from None
        stream = (row[text_field] for row in ds)
    n = 0
    for text in stream:
        if not isinstance(text, str) or not text.strip():
            continue
        yield text
        n += 1
        if limit_docs is not None and n >= limit_docs:
            return
    if n == 0:
        raise UserError(f"dataset {source} holds no text (field {text_field!r}); check the file or data.text_field")


def _suffix(p: Path) -> str:
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    return Path(name).suffix


def _iter_txt(files: list[Path]) -> Iterator[str]:
    import gzip

    for p in files:
        opener = gzip.open if p.name.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as f:
            block: list[str] = []
            for line in f:
                if line.strip():
                    block.append(line.rstrip("\n"))
                elif block:
                    yield "\n".join(block)
                    block = []
            if block:
                yield "\n".join(block)


@dataclass
class TokenBatch:
    """Packed rows: `input_ids` and `doc_ids` are [rows, context_size]; `positions` restart at 0
    for each document segment."""

    input_ids: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenBatch":
        return TokenBatch(*(t.to(device, non_blocking=non_blocking) for t in
                            (self.input_ids, self.doc_ids, self.positions)))

    def pin_memory(self) -> "TokenBatch":
        return TokenBatch(self.input_ids.pin_memory(), self.doc_ids.pin_memory(), self.positions.pin_memory())

    def forward_kwargs(self, dtype: torch.dtype = torch.float32) -> dict:
        """Model kwargs: a 4D block-diagonal causal mask plus per-segment positions."""
        return {"input_ids": self.input_ids, "attention_mask": block_causal_mask(self.doc_ids, dtype),
                "position_ids": self.positions}


def block_causal_mask(doc_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive [rows, 1, T, T] mask: a token sees earlier tokens of its own segment only."""
    t = doc_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=doc_ids.device).tril()
    allowed = causal & (doc_ids[:, :, None] == doc_ids[:, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def tokenize_stream(texts: Iterable[str], tokenizer, batch_docs: int = 64,
                    append_eos: bool = False) -> Iterator[list[int]]:
    """Tokenize documents in batches (fast tokenizers parallelise); no BOS is added."""
    buf: list[str] = []

    def flush():
        enc = tokenizer(buf, add_special_tokens=False)["input_ids"]
        for ids in enc:
            if append_eos and tokenizer.eos_token_id is not None:
                ids = ids + [tokenizer.eos_token_id]
            if ids:
                yield ids

    for text in texts:
        buf.append(text)
        if len(buf) >= batch_docs:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


def pack_rows(docs: Iterable[list[int]], context_size: int) -> Iterator[tuple[list[int], list[int], list[int]]]:
    """Pack token lists end to end into full rows; a document that crosses a row boundary goes on
    as a new segment in the next row. Yields (ids, segment ids, positions) per row."""
    ids: list[int] = []
    segs: list[int] = []
    pos: list[int] = []
    seg = 0
    for doc in docs:
        start = 0
        while start < len(doc):
            take = min(context_size - len(ids), len(doc) - start)
            ids.extend(doc[start:start + take])
            segs.extend([seg] * take)
            pos.extend(range(take))
            seg += 1
            start += take
            if len(ids) == context_size:
                yield ids, segs, pos
                ids, segs, pos = [], [], []
    # the last partial row is dropped: rows are always full (no padding waste)


def batches(rows: Iterable[tuple[list[int], list[int], list[int]]], context_size: int,
            token_budget: int) -> Iterator[TokenBatch]:
    """Group packed rows into batches of about `token_budget` tokens."""
    per_batch = max(1, token_budget // context_size)
    buf: list = []
    for row in rows:
        buf.append(row)
        if len(buf) == per_batch:
            yield _to_batch(buf)
            buf = []
    if buf:
        yield _to_batch(buf)


def _to_batch(rows: list) -> TokenBatch:
    ids, segs, pos = zip(*rows)
    return TokenBatch(torch.tensor(ids), torch.tensor(segs), torch.tensor(pos))


def token_batches(source: str, tokenizer, context_size: int, token_budget: int,
                  text_field: str = "text", limit_tokens: int | None = None) -> Iterator[TokenBatch]:
    """The whole text side: source -> documents -> tokens -> packed rows -> budgeted batches."""
    rows = pack_rows(tokenize_stream(iter_texts(source, text_field), tokenizer), context_size)
    seen = 0
    for batch in batches(rows, context_size, token_budget):
        if limit_tokens is not None and seen + batch.n_tokens > limit_tokens:
            keep = (limit_tokens - seen) // context_size
            if keep <= 0:
                return
            batch = TokenBatch(batch.input_ids[:keep], batch.doc_ids[:keep], batch.positions[:keep])
        seen += batch.n_tokens
        yield batch
        if limit_tokens is not None and seen >= limit_tokens:
            return


def position_mask(input_ids: torch.Tensor, positions: torch.Tensor, special_ids: list[int] | torch.Tensor,
                  acts: torch.Tensor | None = None, outlier_mult: float | None = 10.0) -> torch.Tensor:
    """The one position mask (True = keep), used by training, evals, statistics, labels, vectors
    and norms: drops special tokens, each segment's first token (the attention sink: this
    tokenizer adds no BOS) and positions whose activation norm exceeds `outlier_mult` x the median
    norm of the remaining positions."""
    special = torch.as_tensor(list(special_ids) if not torch.is_tensor(special_ids) else special_ids,
                              device=input_ids.device, dtype=input_ids.dtype)
    keep = (positions != 0) & ~torch.isin(input_ids, special)
    if acts is not None and outlier_mult is not None and keep.any():
        norms = acts.float().norm(dim=-1)
        median = norms[keep].median()
        keep &= norms <= outlier_mult * median
    return keep
