"""DataPipeline: collect, clean, dedup, label, tokenize and split a corpus into sharded Parquet."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    CommonSpec,
    CommonStatus,
    ObjectMeta,
    WorkerResources,
    at_most,
    cel,
    cel_rules,
    exactly_one,
)

# Bounds that keep counts far inside int64 and far beyond any real corpus.
MAX_CHARS = 1_000_000_000
MAX_WORDS = 100_000_000


class PvcSource(ApiModel):
    """Files on a PersistentVolumeClaim, mounted into the Ray pods."""

    claim_name: str = Field(description="Name of the PersistentVolumeClaim.")
    path: str = Field(
        default="/",
        description="Path inside the volume (a file, a directory or a glob).",
    )


class BuiltinCorpus(ApiModel):
    """A corpus assembled at run time from text every machine has (no download)."""

    name: Literal["system-docs"] = Field(
        default="system-docs",
        description="system-docs: Python standard-library docstrings and the system's /usr/share/doc files.",
    )
    max_documents: int = Field(default=20000, ge=1, le=100_000_000, description="Stop after this many documents.")
    derive: Literal["documents", "instructions", "preferences"] = Field(
        default="documents",
        description='documents: the texts themselves; instructions: "What does `name` do?" answered by the '
        "docstring of a standard-library function (tokenizer.task chat); preferences: the same prompt with the right "
        "docstring chosen and another function's rejected (tokenizer.task preference).",
    )


class ConversationFields(ApiModel):
    """Where a row's conversation is: a messages column, or instruction/input/output or prompt/response columns."""

    messages: str = Field(
        default="messages",
        description="Column of OpenAI-style messages: a list of {role, content}, role system, user or assistant.",
    )
    instruction: str = Field(default="instruction", description="Column of an instruction (with input and output).")
    input: str = Field(default="input", description="Column of an optional input appended to the instruction.")
    output: str = Field(default="output", description="Column of the answer to an instruction.")
    prompt: str = Field(default="prompt", description="Column of a prompt: a string or a list of messages.")
    response: str = Field(default="response", description="Column of the answer to a prompt (chat).")
    system: str = Field(default="system", description="Column of an optional system message.")
    chosen: str = Field(default="chosen", description="Column of the preferred answer (preference).")
    rejected: str = Field(default="rejected", description="Column of the rejected answer (preference).")


class SourceSpec(ApiModel):
    """Where the raw corpus comes from and how to read it."""

    model_config = cel_rules(
        cel(
            "[has(self.uris) && size(self.uris) > 0, has(self.pvc), has(self.builtin)].exists_one(x, x)",
            "source sets exactly one of uris, pvc or builtin",
        ),
    )

    uris: list[str] = Field(
        default_factory=list,
        max_length=10000,
        description="Files, directories or globs to read: file://, s3:// or gs:// URIs, or plain local paths.",
    )
    pvc: PvcSource | None = Field(default=None, description="Read from a PersistentVolumeClaim instead of URIs.")
    builtin: BuiltinCorpus | None = Field(
        default=None,
        description="Use a corpus built from local text (the quickstart's); format is ignored.",
    )
    format: Literal["parquet", "jsonl", "csv", "text"] = Field(
        default="jsonl", description="File format of every input file."
    )
    text_mode: Literal["file", "line"] = Field(
        default="line",
        description="For format text: one document per file, or one per line.",
    )
    text_field: str = Field(default="text", description="Column holding the document text.")
    label_field: str | None = Field(default=None, description="Column holding an existing label, passed through.")
    key_field: str | None = Field(
        default=None,
        description="Column holding a stable document id (used by hash splits and reports).",
    )
    time_field: str | None = Field(default=None, description="Column holding a timestamp (used by time splits).")
    fields: ConversationFields = Field(
        default_factory=ConversationFields,
        description="Columns of conversations and preference pairs (tokenizer.task chat or preference).",
    )


class EmptyParams(ApiModel):
    """An operation without parameters."""


class UnicodeParams(ApiModel):
    """Unicode normalisation."""

    form: Literal["NFKC", "NFC", "NFKD", "NFD"] = Field(default="NFKC", description="Normalisation form.")


class LengthFilterParams(ApiModel):
    """Keep documents whose length is inside the bounds."""

    model_config = cel_rules(
        cel(at_most("minChars", "maxChars"), "minChars must be at most maxChars (no document could pass)"),
        cel(at_most("minWords", "maxWords"), "minWords must be at most maxWords (no document could pass)"),
    )

    min_chars: int | None = Field(default=None, ge=0, le=MAX_CHARS, description="Minimum characters.")
    max_chars: int | None = Field(default=None, ge=1, le=MAX_CHARS, description="Maximum characters.")
    min_words: int | None = Field(default=None, ge=0, le=MAX_WORDS, description="Minimum whitespace-separated words.")
    max_words: int | None = Field(default=None, ge=1, le=MAX_WORDS, description="Maximum whitespace-separated words.")


class QualityFilterParams(ApiModel):
    """Heuristic quality filters in the style of Gopher/C4."""

    min_alnum_ratio: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Minimum share of letters and digits among non-space characters.",
    )
    max_repeated_line_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Maximum share of lines that repeat another line of the document.",
    )


class ScriptFilterParams(ApiModel):
    """Keep documents mostly written in the allowed scripts."""

    scripts: list[Literal["latin", "cyrillic", "greek", "arabic", "hebrew", "cjk", "devanagari"]] = Field(
        default_factory=lambda: ["latin"], description="Unicode scripts to keep."
    )
    min_ratio: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Minimum share of letters that belong to the allowed scripts.",
    )


class PiiMaskParams(ApiModel):
    """Mask personal data with regular expressions."""

    emails: bool = Field(default=True, description="Mask e-mail addresses.")
    phone_numbers: bool = Field(default=True, description="Mask phone numbers.")
    ip_addresses: bool = Field(default=True, description="Mask IPv4 and IPv6 addresses.")
    replacement: str = Field(
        default="<{kind}>",
        description="Replacement; {kind} becomes EMAIL, PHONE or IP.",
    )


class ExactDedupParams(ApiModel):
    """Drop exact duplicates across the whole dataset by content hash."""

    normalize: bool = Field(
        default=True,
        description="Hash the lower-cased, whitespace-collapsed text rather than the raw text.",
    )


class NearDedupParams(ApiModel):
    """Drop near duplicates across the whole dataset with MinHash-LSH."""

    model_config = cel_rules(
        cel("self.numPerm % self.bands == 0", "numPerm must be a multiple of bands"),
    )

    threshold: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity that counts as a duplicate.",
    )
    num_perm: int = Field(default=128, ge=8, le=1024, description="MinHash permutations.")
    bands: int = Field(default=16, ge=1, le=1024, description="LSH bands; numPerm/bands rows per band.")
    shingle_size: int = Field(default=5, ge=1, le=32, description="Word n-gram size of the shingles.")
    seed: int = Field(default=42, description="Seed of the hash permutations.")


class OutlierFilterParams(ApiModel):
    """Drop rows whose numeric column is an outlier (tabular data)."""

    column: str = Field(description="Numeric column to test.")
    method: Literal["zscore", "iqr"] = Field(default="zscore", description="z-score or interquartile range.")
    threshold: float = Field(
        default=3.0,
        gt=0,
        description="z-score bound, or the IQR multiplier (1.5 is Tukey's fence).",
    )


class LabelRule(ApiModel):
    """Give a label to documents that match."""

    model_config = cel_rules(
        cel(
            "has(self.pattern) || (has(self.keywords) && size(self.keywords) > 0)",
            "a label rule needs a pattern or keywords",
        ),
    )

    label: str = Field(description="Label given to matching documents.")
    pattern: str | None = Field(default=None, description="Regular expression searched in the text.")
    keywords: list[str] = Field(
        default_factory=list,
        description="Any of these words (case-insensitive) matches.",
    )


class LabelParams(ApiModel):
    """Rule-based labelling; the first matching rule wins."""

    rules: list[LabelRule] = Field(min_length=1, description="Rules tried in order.")
    default: str | None = Field(
        default=None,
        description="Label for documents no rule matches; unset drops them.",
    )
    overwrite: bool = Field(default=False, description="Replace labels the source already has.")


_STEP_MEMBERS = (
    "dropEmpty",
    "stripHtml",
    "normalizeUnicode",
    "collapseWhitespace",
    "lengthFilter",
    "qualityFilter",
    "scriptFilter",
    "maskPii",
    "exactDedup",
    "nearDedup",
    "outlierFilter",
    "label",
)


class CleaningStep(ApiModel):
    """One cleaning operation: set exactly one member (like a Kubernetes volume source)."""

    model_config = cel_rules(
        cel(exactly_one(*_STEP_MEMBERS), "a step sets exactly one operation"),
    )

    name: str | None = Field(default=None, description="Name shown in statistics; defaults to the operation.")
    drop_empty: EmptyParams | None = Field(default=None, description="Drop rows whose text is missing or blank.")
    strip_html: EmptyParams | None = Field(default=None, description="Remove HTML tags and decode entities.")
    normalize_unicode: UnicodeParams | None = Field(default=None, description="Unicode normalisation.")
    collapse_whitespace: EmptyParams | None = Field(
        default=None, description="Collapse runs of spaces and blank lines."
    )
    length_filter: LengthFilterParams | None = Field(default=None, description="Filter by length.")
    quality_filter: QualityFilterParams | None = Field(default=None, description="Filter by quality heuristics.")
    script_filter: ScriptFilterParams | None = Field(default=None, description="Filter by writing system.")
    mask_pii: PiiMaskParams | None = Field(default=None, description="Mask e-mails, phone numbers and IPs.")
    exact_dedup: ExactDedupParams | None = Field(default=None, description="Global exact deduplication.")
    near_dedup: NearDedupParams | None = Field(default=None, description="Global MinHash-LSH near-dedup.")
    outlier_filter: OutlierFilterParams | None = Field(default=None, description="Numeric outlier filter.")
    label: LabelParams | None = Field(default=None, description="Rule-based labelling.")

    def operation(self) -> tuple[str, ApiModel]:
        """The (camelCase name, parameters) of the one operation this step sets."""
        for member in _STEP_MEMBERS:
            params = getattr(self, _snake(member))
            if params is not None:
                return member, params
        raise ValueError("a step sets exactly one operation")


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


class TrainTokenizer(ApiModel):
    """Train a byte-level BPE tokenizer on the cleaned data."""

    vocab_size: int = Field(default=8192, ge=260, le=262144, description="Vocabulary size.")
    min_frequency: int = Field(default=2, ge=1, le=1_000_000_000, description="Minimum pair frequency to merge.")


class ExtendVocabulary(ApiModel):
    """Train a tokenizer on the cleaned corpus and add the tokens the base tokenizer lacks (vocabulary extension)."""

    vocab_size: int = Field(default=8000, ge=100, le=262144, description="Vocabulary size of the trained tokenizer.")
    min_frequency: int = Field(default=2, ge=1, le=1_000_000_000, description="Minimum frequency of a merge or piece.")
    model: Literal["bpe", "unigram"] | None = Field(
        default=None,
        description="bpe (byte-level like GPT-2's, or SentencePiece-style like LLaMA's, following the base) or "
        "unigram; defaults to the base tokenizer's model, which must be the same kind.",
    )


class TokenizerSpec(ApiModel):
    """How documents become token ids."""

    model_config = cel_rules(
        cel("!(has(self.path) && has(self.train))", "set either path or train, not both"),
        cel(
            "!(has(self.fromModel) && (has(self.path) || has(self.train)))",
            "fromModel excludes path and train",
        ),
        cel("!has(self.extend) || has(self.path) || has(self.fromModel)", "extend needs path or fromModel"),
    )

    path: str | None = Field(
        default=None,
        description="A Hugging Face tokenizers file (tokenizer.json) or directory to load.",
    )
    from_model: str | None = Field(
        default=None,
        description="A Hugging Face model or tokenizer directory (local path, PVC path, s3:// or gs://) whose "
        "tokenizer is loaded with AutoTokenizer, so data and model agree.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Let fromModel run the tokenizer code the directory ships (off: only library tokenizers).",
    )
    train: TrainTokenizer | None = Field(
        default=None,
        description="Train a new tokenizer (the default when path and fromModel are unset).",
    )
    extend: ExtendVocabulary | None = Field(
        default=None,
        description="Extend the vocabulary of the path or fromModel tokenizer with tokens trained on the corpus.",
    )
    task: Literal["languageModeling", "classification", "chat", "preference"] = Field(
        default="languageModeling",
        description="languageModeling packs tokens into fixed-length sequences; classification keeps one row per "
        "document; chat writes input_ids and labels (only assistant tokens trained); preference writes chosen and "
        "rejected sequences.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template for chat and preference, instead of the tokenizer's own (or the default "
        "when it has none); with languageModeling, written into the output tokenizer so a model trained on it "
        "answers /v1/chat/completions.",
    )
    sequence_length: int = Field(
        default=256,
        ge=8,
        le=131072,
        description="Packed sequence length, or the truncation length of classification, chat and preference rows.",
    )


class SplitSpec(ApiModel):
    """Train/validation/test split."""

    model_config = cel_rules(
        cel(
            "self.train + self.validation + self.test >= 0.999 && self.train + self.validation + self.test <= 1.001",
            "split fractions train + validation + test must sum to 1",
        ),
        cel("self.method != 'hash' || has(self.keyField)", "method hash needs keyField"),
        cel(
            "self.method != 'time' || has(self.keyField)",
            "method time needs keyField (the timestamp column)",
        ),
    )

    train: float = Field(default=0.9, gt=0, le=1, description="Fraction of documents for training.")
    validation: float = Field(default=0.05, ge=0, lt=1, description="Fraction for validation.")
    test: float = Field(default=0.05, ge=0, lt=1, description="Fraction for the final test.")
    method: Literal["random", "hash", "stratified", "time"] = Field(
        default="random",
        description="random (seeded), hash of keyField (stable across reruns), stratified by label, "
        "or time (oldest rows to train).",
    )
    key_field: str | None = Field(default=None, description="Column for hash or time splits.")
    seed: int = Field(default=42, description="Seed for random and stratified splits.")


class OutputSpec(ApiModel):
    """Where the shards go."""

    uri: str = Field(description="Output directory: a local path, file://, s3:// or gs:// URI.")
    target_shard_size_mb: float = Field(
        default=128,
        gt=0,
        alias="targetShardSizeMB",
        description="Target size of each Parquet shard, in MB.",
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(default="zstd", description="Parquet compression.")
    format: Literal["tokenized", "documents"] = Field(
        default="tokenized",
        description="tokenized: token ids for training; documents: the cleaned, deduplicated rows, not tokenized.",
    )
    document_format: Literal["parquet", "jsonl"] = Field(
        default="parquet", description="File format of format documents shards."
    )


class DataResources(WorkerResources):
    """Ray workers for the pipeline."""

    workers: int = Field(default=1, ge=1, le=1000, description="Number of Ray worker pods.")


class DataPipelineSpec(CommonSpec):
    """Desired state of a DataPipeline."""

    source: SourceSpec = Field(description="Input corpus.")
    steps: list[CleaningStep] = Field(
        default_factory=list,
        max_length=64,
        description="Cleaning operations, applied in order.",
    )
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec, description="Tokenization.")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train/validation/test split.")
    output: OutputSpec = Field(description="Output location and shard size.")
    resources: DataResources = Field(default_factory=DataResources, description="Ray workers.")
    on_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="On a bad row or file: fail the run, or count it as errored and go on.",
    )


class OperationStats(ApiModel):
    """Rows through one operation."""

    name: str = Field(description="Operation name.")
    rows_in: int = Field(default=0, description="Rows that entered the operation.")
    rows_out: int = Field(default=0, description="Rows that left it.")
    rows_errored: int = Field(default=0, description="Rows it could not process (onError: skip).")


class SplitStats(ApiModel):
    """What one split holds."""

    rows: int = Field(default=0, description="Rows (documents, or packed sequences).")
    tokens: int = Field(default=0, description="Tokens.")
    shards: int = Field(default=0, description="Parquet shards.")


class DataPipelineStatus(CommonStatus):
    """Observed state of a DataPipeline."""

    rows_in: int | None = Field(default=None, description="Rows read from the source.")
    rows_out: int | None = Field(default=None, description="Documents that passed every operation.")
    rows_dropped: int | None = Field(default=None, description="Documents dropped by operations.")
    rows_errored: int | None = Field(default=None, description="Rows that could not be processed.")
    tokens: int | None = Field(default=None, description="Tokens written, all splits together.")
    shards: int | None = Field(default=None, description="Shards written, all splits together.")
    progress: str | None = Field(default=None, description="Short progress text, e.g. 'nearDedup 3/7'.")
    operations: list[OperationStats] = Field(default_factory=list, description="Rows in and out per operation.")
    splits: dict[str, SplitStats] = Field(default_factory=dict, description="Rows, tokens and shards per split.")
    output_uri: str | None = Field(default=None, description="Where the shards and _manifest.json were written.")
    manifest_uri: str | None = Field(default=None, description="URI of _manifest.json.")
    tokenizer_uri: str | None = Field(default=None, description="URI of the tokenizer written with the data.")


class DataPipeline(ApiModel):
    """A DataPipeline custom resource."""

    api_version: Literal["kubeforge.dev/v1alpha1"] = Field(description="kubeforge.dev/v1alpha1.")
    kind: Literal["DataPipeline"] = Field(description="DataPipeline.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: DataPipelineSpec = Field(description="Desired state.")
    status: DataPipelineStatus | None = Field(default=None, description="Observed state.")
