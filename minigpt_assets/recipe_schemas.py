"""Recipe schemas of the data half: filters, sources, classifiers, dedup groups, tokenizers and mixtures.

Strict pydantic models (unknown fields are errors); `recipes.py` loads, cross-checks and hashes them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
MODEL_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # model names keep their version dots: llama-3.2-1b
RECIPE_KINDS = ("sources", "filters", "classifiers", "dedup", "tokenizers", "mixtures", "models", "experiments",
                "evals", "sweeps")
SWEEP_KINDS = ("mixture", "scaling")


class Model(BaseModel):
    """Strict base: unknown fields are errors, so a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- filters
class LengthFilter(Model):
    """Character and word bounds; the cheapest rules, applied first."""

    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, gt=0)


class GopherQuality(Model):
    """Gopher (Rae et al. 2021, appendix A) document quality rules; null disables a rule."""

    min_words: int | None = Field(50, ge=0)
    max_words: int | None = Field(100_000, gt=0)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1)
    min_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(2, ge=0)
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherRepetition(Model):
    """Gopher repetition rules: duplicated lines/paragraphs and n-gram repetition, as fractions."""

    max_duplicate_line_fraction: float | None = Field(0.30, ge=0, le=1)
    max_duplicate_paragraph_fraction: float | None = Field(0.30, ge=0, le=1)
    max_duplicate_line_char_fraction: float | None = Field(0.20, ge=0, le=1)
    max_duplicate_paragraph_char_fraction: float | None = Field(0.20, ge=0, le=1)
    max_top_ngram_char_fraction: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class C4Filter(Model):
    """C4 (Raffel et al. 2020) page-level rules, as document filters (nothing is rewritten)."""

    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    min_sentences: int | None = Field(3, ge=0)
    max_policy_line_fraction: float | None = Field(0.5, ge=0, le=1)
    min_terminal_punct_line_fraction: float | None = Field(None, ge=0, le=1)
    bad_words: tuple[str, ...] = ()


class CodeFilter(Model):
    """Rules for source code in the style of The Stack / StarCoder: line lengths and character mix."""

    max_line_length: int | None = Field(1000, gt=0)
    max_mean_line_length: float | None = Field(100.0, gt=0)
    min_alnum_fraction: float | None = Field(0.25, ge=0, le=1)
    max_generated_marker: bool = True


class LanguageFilter(Model):
    """Keep documents whose identified language is listed, with at least `min_score` confidence."""

    languages: tuple[str, ...] = ("en",)
    min_score: float = Field(0.65, ge=0, le=1)


class QualityFilter(Model):
    """Keep documents whose fastText quality score (P(positive)) is at least `min_score`."""

    classifier: str
    min_score: float = Field(0.5, ge=0, le=1)


class FilterProfile(Model):
    """A filter profile: which rule families run, with their thresholds. A missing family does not run."""

    length: LengthFilter | None = None
    gopher_quality: GopherQuality | None = None
    gopher_repetition: GopherRepetition | None = None
    c4: C4Filter | None = None
    code: CodeFilter | None = None
    language: LanguageFilter | None = None
    quality: QualityFilter | None = None


# --------------------------------------------------------------------------------------------- sources
class SourceDedup(Model):
    """Which dedup group a source joins (null: no dedup) and its priority inside the group (higher wins)."""

    group: str | None = "default"
    priority: int = 0


class SourceBase(Model):
    domain: str
    license: str = "unknown"
    description: str = ""
    optional: bool = False
    filters: str | FilterProfile | None = None
    dedup: SourceDedup = SourceDedup()
    limit_documents: int | None = Field(None, gt=0)
    shard_documents: int = Field(20_000, gt=0)
    validation_fraction: float = Field(0.02, ge=0, lt=1)

    @field_validator("domain")
    @classmethod
    def _domain_slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"expected a slug of [a-z0-9_-] (got {v!r})")
        return v


class JsonlSource(SourceBase):
    """JSON lines, plain or .gz / .zst compressed (by file ending); a path, a glob or a directory."""

    kind: Literal["jsonl"]
    location: str
    text_field: str = "text"
    id_field: str | None = None


class ParquetSource(SourceBase):
    """Parquet files: a local path/glob/directory or any fsspec URL (s3://, gs://, memory://, file://)."""

    kind: Literal["parquet"]
    location: str
    text_field: str = "text"
    id_field: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)


class TextDirSource(SourceBase):
    """A directory of text files: one document per file, or per chunk when `split_on` is given."""

    kind: Literal["text_dir"]
    location: str
    include: tuple[str, ...] = ("**/*.txt",)
    exclude: tuple[str, ...] = ()
    split_on: str | None = None
    encoding: str = "utf-8"


class CodeTreeSource(SourceBase):
    """A source-code tree: one document per file, language tag from the file extension."""

    kind: Literal["code_tree"]
    location: str
    include: tuple[str, ...] = ("**/*.py",)
    exclude: tuple[str, ...] = ()
    max_file_bytes: int = Field(1_000_000, gt=0)


class HFDatasetSource(SourceBase):
    """A Hugging Face dataset: a `save_to_disk` folder, or a name resolved from the local cache (offline)."""

    kind: Literal["hf_dataset"]
    location: str
    split: str = "train"
    config_name: str | None = None
    text_field: str = "text"
    id_field: str | None = None


class DuckDBSource(SourceBase):
    """Rows of a DuckDB SQL query over files (read_parquet, read_json, read_csv...)."""

    kind: Literal["duckdb_sql"]
    query: str
    text_field: str = "text"
    id_field: str | None = None


class BuiltinSource(SourceBase):
    """A corpus built from what the machine has (stdlib docstrings, man pages) or generated (web-like, spam)."""

    kind: Literal["builtin"]
    generator: Literal["python_docstrings", "man_pages", "synthetic_web", "synthetic_spam"]
    options: dict[str, Any] = Field(default_factory=dict)


SourceRecipe = Annotated[
    Union[JsonlSource, ParquetSource, TextDirSource, CodeTreeSource, HFDatasetSource, DuckDBSource, BuiltinSource],
    Field(discriminator="kind"),
]
SOURCE_KINDS = ("jsonl", "parquet", "text_dir", "code_tree", "hf_dataset", "duckdb_sql", "builtin")


class _SourceFile(BaseModel):
    source: SourceRecipe


# --------------------------------------------------------------------------------------------- classifiers / dedup
class ClassifierRecipe(Model):
    """A fastText quality classifier trained on raw documents of positive vs negative sources (DCLM-style)."""

    positive: tuple[str, ...] = Field(min_length=1)
    negative: tuple[str, ...] = Field(min_length=1)
    max_documents_per_class: int = Field(5000, gt=0)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    epochs: int = Field(5, gt=0)
    lr: float = Field(0.1, gt=0)
    word_ngrams: int = Field(2, ge=1)
    dim: int = Field(64, gt=0)
    min_count: int = Field(1, ge=1)
    seed: int = 0


class DedupRecipe(Model):
    """One dedup universe: exact (normalized hash) and near-duplicate (MinHash LSH) settings shared by its sources."""

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(5, ge=1)
    seed: int = 1
    verify_candidates: bool = True


# --------------------------------------------------------------------------------------------- tokenizers
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerRecipe(Model):
    """A byte-level BPE trained on deduplicated documents (HF `tokenizers`), or a local pretrained folder."""

    kind: Literal["bpe", "pretrained"] = "bpe"
    path: str | None = None
    sources: tuple[str, ...] = ()
    vocab_size: int = Field(6400, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    sample_documents: int = Field(20_000, gt=0)
    max_chars_per_document: int = Field(20_000, gt=0)
    special_tokens: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    bos_token: str = "<|im_start|>"
    eos_token: str = "<|im_end|>"
    pad_token: str = "<|endoftext|>"
    chat_template: str = CHATML_TEMPLATE
    seed: int = 0
    # how text is split before BPE: GPT-2's byte-level regex, or Qwen2's (digits one by one, NFC first). transformers
    # 5 rebuilds the tokenizer of a Qwen2 export (model_type qwen2) with Qwen2's split whatever tokenizer.json says,
    # so a qwen2-family model exported for transformers / lm-eval needs `qwen2` to tokenize as it was trained.
    pre_tokenizer: Literal["bytelevel", "qwen2"] = "bytelevel"

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        if out.get("pre_tokenizer") == "bytelevel":  # the default stays out of the content hash: recipes written
            out.pop("pre_tokenizer")                   # before the field existed keep their version
        return out

    def model_post_init(self, _ctx: Any) -> None:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("path: required when kind is 'pretrained'")
        for name in ("bos_token", "eos_token", "pad_token"):
            if getattr(self, name) not in self.special_tokens and self.kind == "bpe":
                raise ValueError(f"{name}: {getattr(self, name)!r} must be one of special_tokens")


# --------------------------------------------------------------------------------------------- mixtures
def positive_weights(v: dict[str, float]) -> dict[str, float]:
    """Validator of a name -> weight mapping (mixture sources, a sweep objective's tasks)."""
    bad = [k for k, w in v.items() if not w > 0]
    if bad:
        raise ValueError(f"weights must be > 0 (got {', '.join(f'{k}={v[k]}' for k in bad)})")
    return v


class MixtureRecipe(Model):
    """A training mixture: source weights as shares of training tokens, the token budget and the split."""

    sources: dict[str, float] = Field(min_length=1)
    tokenizer: str
    total_tokens: int = Field(1_000_000, gt=0)
    seq_len: int = Field(512, gt=0)
    validation_tokens: int = Field(50_000, ge=0)
    seed: int = 0
    max_epochs: float = Field(4.0, gt=0)

    _positive_weights = field_validator("sources")(classmethod(lambda cls, v: positive_weights(v)))
