"""Chat and preference rows: reading conversations, loss masks from the chat template (with and without one),
truncation, preference pairs and their errors, documents output, the prompt that keeps rows in one split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeforge.api.datapipeline import ConversationFields
from kubeforge_trainer.data import chat, hftokenizer, stages
from kubeforge_trainer.data.columns import PARTS, RID, TEXT
from kubeforge_trainer.data.errors import DataPipelineError
from kubeforge_trainer.data.readers import Chunk, FileSlice, ReadSpec, read_chunk
from tiny_tokenizers import save_model_tokenizer

FIELDS = ConversationFields()
SKIP = {"sequence_length": 512, "on_error": "skip"}


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> hftokenizer.Bundle:
    """A model tokenizer with a ChatML template (special <|im_start|>/<|im_end|> tokens)."""
    path = save_model_tokenizer(tmp_path_factory.mktemp("chatml"))
    return hftokenizer.load_model_tokenizer(str(path), trust_remote_code=False)


@pytest.fixture(scope="module")
def untemplated(tmp_path_factory) -> hftokenizer.Bundle:
    """A model tokenizer without a chat template, given the default one (as the pipeline does)."""
    path = save_model_tokenizer(tmp_path_factory.mktemp("plain"), chat_template=None)
    bundle = hftokenizer.load_model_tokenizer(str(path), trust_remote_code=False)
    assert bundle.chat_template is None
    return hftokenizer.with_chat_template(bundle, None)


def rows(*records: dict, task: str = "chat") -> pa.Table:
    """Working-table rows of source records, as the reader makes them."""
    segments = [chat.segments(r, FIELDS, task) for r in records]
    return pa.table(
        {
            TEXT: [chat.joined(t) for t, _ in segments],
            PARTS: [p for _, p in segments],
            RID: pa.array(range(len(records)), pa.int64()),
        }
    )


def decode(bundle: hftokenizer.Bundle, ids: list[int]) -> str:
    return hftokenizer.tokenizer(bundle).decode(ids, skip_special_tokens=False)


def trained_text(bundle: hftokenizer.Bundle, ids: list[int], labels: list[int]) -> str:
    """The text of the tokens that carry a loss; the labels must equal the ids there."""
    kept = [(i, label) for i, label in zip(ids, labels, strict=True) if label != chat.IGNORE_INDEX]
    assert all(i == label for i, label in kept)
    return decode(bundle, [i for i, _ in kept])


MULTI = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is the answer"},
        {"role": "assistant", "content": "the answer is the dog"},
        {"role": "user", "content": "and the fox"},
        {"role": "assistant", "content": "the quick fox"},
    ]
}


def test_single_turn_trains_only_the_answer_and_its_end_marker(chatml):
    table, errored, _ = stages.conversation_table(
        rows({"prompt": "what is the answer", "response": "the lazy dog"}), chatml, "chat", SKIP
    )
    ids, labels = table.column("input_ids")[0].as_py(), table.column("labels")[0].as_py()
    assert errored == 0 and len(ids) == len(labels)
    rendered = "<|im_start|>user\nwhat is the answer<|im_end|>\n<|im_start|>assistant\nthe lazy dog<|im_end|>\n"
    assert decode(chatml, ids) == rendered
    assert trained_text(chatml, ids, labels) == "the lazy dog<|im_end|>\n"
    first_trained = next(i for i, label in enumerate(labels) if label != chat.IGNORE_INDEX)
    assert (
        decode(chatml, ids[:first_trained]) == "<|im_start|>user\nwhat is the answer<|im_end|>\n<|im_start|>assistant\n"
    )


def test_multi_turn_masks_system_and_every_user_turn(chatml):
    table, _, _ = stages.conversation_table(rows(MULTI), chatml, "chat", SKIP)
    ids, labels = table.column("input_ids")[0].as_py(), table.column("labels")[0].as_py()
    assert trained_text(chatml, ids, labels) == "the answer is the dog<|im_end|>\nthe quick fox<|im_end|>\n"
    masked = decode(chatml, [i for i, label in zip(ids, labels, strict=True) if label == chat.IGNORE_INDEX])
    assert "be brief" in masked and "and the fox" in masked and "the quick fox" not in masked


def test_without_a_template_the_default_one_ends_answers_with_eos(untemplated):
    table, _, _ = stages.conversation_table(rows(MULTI), untemplated, "chat", SKIP)
    ids, labels = table.column("input_ids")[0].as_py(), table.column("labels")[0].as_py()
    assert decode(untemplated, ids).startswith("be brief\n\n### User:\nwhat is the answer\n\n### Assistant:\n")
    eos = "<|endoftext|>"
    assert trained_text(untemplated, ids, labels) == f"the answer is the dog{eos}\n\nthe quick fox{eos}\n\n"


def test_instruction_fields_and_truncation_rule(chatml):
    record = {"instruction": "answer this", "input": "the dog", "output": "the fox " * 40}
    texts, parts = chat.segments(record, FIELDS, "chat")
    assert parts == ["user", "assistant"] and texts[0] == "answer this\n\nthe dog"
    full, _, _ = stages.conversation_table(rows(record), chatml, "chat", SKIP)
    labels = full.column("labels")[0].as_py()
    prompt_tokens = next(i for i, label in enumerate(labels) if label != chat.IGNORE_INDEX)
    assert len(labels) > prompt_tokens + 5
    cut, _, _ = stages.conversation_table(rows(record), chatml, "chat", {"sequence_length": prompt_tokens + 5})
    # The first sequenceLength tokens are kept: the whole prompt and the start of the answer.
    assert cut.column("input_ids")[0].as_py() == full.column("input_ids")[0].as_py()[: prompt_tokens + 5]
    assert cut.column("labels")[0].as_py() == labels[: prompt_tokens + 5]
    # A prompt that fills the whole length leaves nothing to train on: an errored row, never a silent drop.
    long_prompt = {"prompt": "what is the answer " * 30, "response": "the dog"}
    table, errored, errors = stages.conversation_table(
        rows(long_prompt), chatml, "chat", {**SKIP, "sequence_length": 20}
    )
    assert table.num_rows == 0 and errored == 1 and "no assistant token within the first 20" in errors[0]["reason"]
    with pytest.raises(DataPipelineError, match=r"spec.tokenizer.task: chat row 0: no assistant token"):
        stages.conversation_table(rows(long_prompt), chatml, "chat", {"sequence_length": 20, "on_error": "fail"})


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role is 'robot'"),
        ({"messages": "hi"}, "not a non-empty list of messages"),
        ({"text": "hi"}, "no 'messages', 'instruction' or 'prompt' field"),
        ({"prompt": "hi", "response": 3}, "field 'response' is int"),
    ],
)
def test_bad_conversations_name_the_problem(record, reason):
    with pytest.raises(chat.RowProblem, match=reason):
        chat.segments(record, FIELDS, "chat")


def test_preference_pairs_mask_the_prompt_in_both_sequences(chatml):
    record = {"prompt": "what is the answer", "chosen": "the lazy dog", "rejected": "the quick fox"}
    table, errored, _ = stages.conversation_table(rows(record, task="preference"), chatml, "preference", SKIP)
    assert errored == 0 and table.column_names == list(stages.PREFERENCE_COLUMNS)
    chosen_ids, chosen_labels = table.column("chosen_input_ids")[0].as_py(), table.column("chosen_labels")[0].as_py()
    rejected_ids = table.column("rejected_input_ids")[0].as_py()
    rejected_labels = table.column("rejected_labels")[0].as_py()
    prompt = "<|im_start|>user\nwhat is the answer<|im_end|>\n<|im_start|>assistant\n"
    assert decode(chatml, chosen_ids) == prompt + "the lazy dog<|im_end|>\n"
    assert decode(chatml, rejected_ids) == prompt + "the quick fox<|im_end|>\n"
    assert trained_text(chatml, chosen_ids, chosen_labels) == "the lazy dog<|im_end|>\n"
    assert trained_text(chatml, rejected_ids, rejected_labels) == "the quick fox<|im_end|>\n"
    n = chosen_labels.index(next(label for label in chosen_labels if label != chat.IGNORE_INDEX))
    assert chosen_ids[:n] == rejected_ids[:n]  # the same prompt tokens


def test_preference_errors_are_errored_rows_with_a_reason(chatml):
    good = {"prompt": "q", "chosen": "the dog", "rejected": "the fox"}
    equal = {"messages": [{"role": "user", "content": "q"}], "chosen": "the dog", "rejected": "the dog"}
    table, errored, errors = stages.conversation_table(rows(good, equal, task="preference"), chatml, "preference", SKIP)
    assert table.num_rows == 1 and errored == 1
    assert errors == [
        {"field": "spec.tokenizer.task", "source": "tokenize", "row": 1, "reason": "chosen and rejected are equal"}
    ]
    with pytest.raises(chat.RowProblem, match="the prompt is empty"):
        chat.segments({"prompt": "  ", "chosen": "a", "rejected": "b"}, FIELDS, "preference")
    # Cleaning can empty a prompt too: the tokenize stage checks again.
    emptied = rows(good, task="preference").set_column(0, TEXT, pa.array([chat.joined([" ", "a", "b"])]))
    _, errored, errors = stages.conversation_table(emptied, chatml, "preference", SKIP)
    assert errored == 1 and errors[0]["reason"] == "the prompt is empty"


def test_cleaning_that_merges_messages_is_an_errored_row(chatml):
    broken = rows(MULTI).set_column(0, TEXT, pa.array(["one text without separators"]))
    _, errored, errors = stages.conversation_table(broken, chatml, "chat", SKIP)
    assert errored == 1 and "cleaning left 1 of the conversation's 5 messages" in errors[0]["reason"]


def test_rows_with_the_same_prompt_share_their_split_key():
    a = {"prompt": "what is the answer", "response": "the dog"}
    b = {"prompt": "what is the answer", "response": "the fox"}
    c = {"prompt": "another question", "response": "the dog"}
    keys, _ = stages.split_keys(rows(a, b, c), "random", 42)
    ch = keys.column("ch").to_pylist()
    assert ch[0] == ch[1] != ch[2]


def test_documents_keep_the_conversation_and_a_stable_id():
    table, errored, _ = stages.documents_table(rows(MULTI), "chat", SKIP)
    assert errored == 0 and table.column_names == ["id", "messages"]
    assert table.column("messages")[0].as_py() == MULTI["messages"]
    again, _, _ = stages.documents_table(rows(MULTI), "chat", SKIP)
    assert again.column("id").to_pylist() == table.column("id").to_pylist()
    pref = {"prompt": "q", "chosen": "the dog", "rejected": "the fox"}
    table, _, _ = stages.documents_table(rows(pref, task="preference"), "preference", SKIP)
    assert table.column_names == ["id", "prompt", "chosen", "rejected"]
    assert table.to_pylist()[0]["prompt"] == [{"role": "user", "content": "q"}]
    plain = pa.table({TEXT: ["a document", "another"], RID: pa.array([0, 1], pa.int64())})
    table, _, _ = stages.documents_table(plain, "languageModeling", SKIP)
    assert table.column("text").to_pylist() == ["a document", "another"] and len(set(table.column("id"))) == 2


def test_a_template_that_is_not_prefix_stable_is_refused(chatml):
    reversed_template = "{% for m in messages|reverse %}{{ m['content'] }}|{% endfor %}"
    bundle = hftokenizer.with_chat_template(chatml, reversed_template)
    with pytest.raises(DataPipelineError, match=r"spec\.tokenizer\.chatTemplate"):
        stages.conversation_table(rows(MULTI), bundle, "chat", SKIP)


def test_masks_line_up_with_ids_for_every_row():
    pieces = [("ab", False), ("cd", True), ("e", False)]
    ids, labels = chat.encode_spans(lambda texts: [[ord(c) for c in t] for t in texts], pieces)
    assert ids.tolist() == [97, 98, 99, 100, 101]
    assert labels.tolist() == [-100, -100, 99, 100, -100]
    pair = chat.preference_pair(np.array([1, 2], np.int32), [np.array([3, 4, 5], np.int32)], 4)
    assert pair[0][0].tolist() == [1, 2, 3, 4] and pair[0][1].tolist() == [-100, -100, 3, 4]


def test_conversations_are_read_from_parquet_and_csv_with_bad_rows_counted(tmp_path):
    pq.write_table(
        pa.Table.from_pylist([MULTI, {"messages": [{"role": "user", "content": "only a question"}]}]),
        tmp_path / "c.parquet",
    )
    (tmp_path / "c.csv").write_text('instruction,input,output\n"say hi",,"hi"\n"translate","chat","talk"\n')
    spec = ReadSpec(format="parquet", conversation="chat", fields=FIELDS, on_error="skip")
    result = read_chunk(Chunk(0, (FileSlice(str(tmp_path / "c.parquet")),)), spec)
    assert result.table.column(PARTS).to_pylist() == [["system", "user", "assistant", "user", "assistant"]]
    assert result.table.column(TEXT)[0].as_py().split(chat.SEPARATOR)[2] == "the answer is the dog"
    assert result.rows_errored == 1 and result.errors[0].reason == "the conversation has no assistant message"
    assert result.errors[0].field == "spec.source.fields"
    spec = ReadSpec(format="csv", conversation="chat", fields=FIELDS)
    table = read_chunk(Chunk(0, (FileSlice(str(tmp_path / "c.csv")),)), spec).table
    assert table.column(TEXT).to_pylist() == [chat.joined(["say hi", "hi"]), chat.joined(["translate\n\nchat", "talk"])]
    with pytest.raises(DataPipelineError, match=r"spec.source.fields: .*c.parquet row 2: the conversation has no"):
        read_chunk(
            Chunk(0, (FileSlice(str(tmp_path / "c.parquet")),)),
            ReadSpec(format="parquet", conversation="chat", fields=FIELDS),
        )


def test_a_trained_tokenizer_renders_chat_with_the_default_template():
    from kubeforge_trainer.data import tokenize
    from tiny_tokenizers import ENGLISH

    trained = tokenize.train_bpe([ENGLISH], 300, 2)
    bundle = hftokenizer.with_chat_template(hftokenizer.from_tokenizers(trained, "<pad>", "<eos>", {}), None)
    assert bundle.chat_template == chat.DEFAULT_CHAT_TEMPLATE and bundle.token_id("eos_token") == 1
    table, _, _ = stages.conversation_table(rows({"prompt": "the dog", "response": "the fox"}), bundle, "chat", SKIP)
    ids, labels = table.column("input_ids")[0].as_py(), table.column("labels")[0].as_py()
    assert trained_text(bundle, ids, labels) == "the fox<eos>\n\n"
