"""Chat: the exported chat_template gives mtds's ids in transformers, and mtds.chat's history
(cropping, /reset). Not covered: content that spells a special token ("</s>", "<s>"), which the
export reads as that token (mtds.hf.tokenizer.write_chat_template) and mtds as text. No training
here: the tokenizer export path runs directly on the tiny corpus's tokenizer. The end-to-end
`mtds.chat` on a fine-tuned model is in tests/test_sft.py."""

from __future__ import annotations

import json

import pytest

SYSTEM = {"role": "system", "content": "You write Python.\n"}
CONVERSATIONS = [
    [{"role": "user", "content": "What does json.dumps do?"},
     {"role": "assistant", "content": "def dumps(obj, *, skipkeys=False):"}],
    [SYSTEM, {"role": "user", "content": "Parse a header."}, {"role": "assistant", "content": "def parse(s):"}],
    [SYSTEM, {"role": "user", "content": " two  spaces\n\nand lines"}, {"role": "assistant", "content": "\nx = 1\n"},
     {"role": "user", "content": "Return: it's #1! (\"quoted\") {braces} {{ jinja }}"},
     {"role": "assistant", "content": "return 'ok'"}, {"role": "user", "content": "and the last one?"},
     {"role": "assistant", "content": "import email.utils"}],
]


@pytest.fixture(scope="module")
def export(tiny_data, tmp_path_factory):
    """(ChatEncoder, AutoTokenizer of an export) for the tiny corpus's sentencepiece tokenizer."""
    from transformers import AutoTokenizer

    from data_tools.chat_format import ChatEncoder
    from mtds.hf.tokenizer import write_chat_template, write_tokenizer

    out = str(tmp_path_factory.mktemp("chat_export"))
    write_tokenizer(tiny_data["tokenizer_model"], out, 512)
    assert write_chat_template(out, tiny_data["tokenizer_model"]) is not None
    return ChatEncoder(tiny_data["tokenizer_model"]), AutoTokenizer.from_pretrained(out)


def _ids(encoding) -> list[int]:
    return list(encoding["input_ids"] if hasattr(encoding, "keys") else encoding)  # a BatchEncoding in transformers 5


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one_turn", "system", "multi_turn"])
def test_the_exported_chat_template_gives_the_ids_mtds_prompts_and_trains_with(export, conversation):
    enc, hf = export
    for end in range(1, len(conversation) + 1):  # every prefix that ends before an answer: a prompt
        if conversation[end - 1]["role"] == "assistant":
            continue
        assert _ids(hf.apply_chat_template(conversation[:end], add_generation_prompt=True)) == \
            enc.prompt_ids(conversation[:end])
    ids, mask = enc.encode(conversation)
    assert _ids(hf.apply_chat_template(conversation)) == ids
    assert hf.decode([i for i, m in zip(ids, mask) if m]).count("</s>") == sum(
        m["role"] == "assistant" for m in conversation)


def test_the_chat_template_ids_are_what_data_tools_sft_writes(export, tiny_data, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_tools.sft import sft_preprocess

    _, hf = export
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS))
    s = sft_preprocess([str(path)], str(tmp_path / "sft"), tiny_data["tokenizer_model"], 512, quiet=True)
    written = IndexedDataset(s.outputs[0])
    for i, conversation in enumerate(CONVERSATIONS):
        assert written[i].tolist() == _ids(hf.apply_chat_template(conversation))


def test_a_tokenizer_with_its_own_chat_template_keeps_it(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mtds.hf.tokenizer import write_chat_template

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hi": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    own = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", chat_template=own).save_pretrained(tmp_path)
    assert write_chat_template(str(tmp_path), str(tmp_path), "HuggingFaceTokenizer") is None


def test_the_conversation_keeps_its_history_and_drops_the_oldest_turns_to_fit(export):
    from mtds.chat import Conversation

    enc, _ = export
    conv = Conversation(enc, max_context=10_000, reserve=16, system="Be brief.")
    ids, dropped = conv.prompt("first question")
    assert dropped == 0 and ids == enc.prompt_ids([{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "first question"}])
    conv.answer("def first():")
    conv.prompt("second question")
    conv.answer("def second():")
    history = conv.system + conv.turns
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    # room for the system prompt, one exchange and the next question only: the first exchange goes
    keep = conv.system + conv.turns[2:] + [{"role": "user", "content": "third"}]
    conv.max_context = len(enc.prompt_ids(keep)) + conv.reserve
    ids, dropped = conv.prompt("third")
    assert dropped == 1 and ids == enc.prompt_ids(keep) and conv.system + conv.turns == keep
    conv.max_context = 1  # not even this turn fits: it is kept whole (generate crops from the left)
    ids, dropped = conv.prompt("fourth")
    assert dropped == 2 and conv.turns == [{"role": "user", "content": "fourth"}]
    conv.reset()
    assert conv.turns == [] and conv.system == [{"role": "system", "content": "Be brief."}]
