"""Chat samples to token ids plus a per-token loss mask, and chat prompts for generation.

A sample is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` or
`{"prompt": str, "response": str}` (one user turn, one assistant turn). Two templates:

- "default", plain-text role markers any tokenizer encodes (no new special tokens):

      [the tokenizer's leading special tokens, e.g. a Hugging Face BOS]
      ### System:\\n{content}\\n          (optional)
      ### User:\\n{content}\\n
      ### Assistant:\\n{content}<eos>    (<eos>: the tokenizer's end-of-document token ends a turn)
      ... further turns ...

  Each marker and each content is encoded on its own and the ids concatenated, so an
  assistant span is exact by construction (the project's sentencepiece models add no dummy
  prefix, so this is also what encoding the whole text gives, up to merges across a boundary).
- "hf": a Hugging Face tokenizer's own `chat_template` (`apply_chat_template`). The assistant
  spans are found by rendering the conversation up to each assistant turn (with and without the
  generation prompt) and comparing token prefixes with the whole conversation's tokens; a template
  whose renderings do not tokenize prefix-stably is refused. A span ends after the tokenizer's eos
  (the end-of-turn token, e.g. ChatML's `<|im_end|>`) where the template puts one.

"auto" takes "hf" for a Hugging Face tokenizer that has a chat_template, else "default".
The loss mask is 1 on assistant content and the end-of-turn token that ends it, 0 elsewhere:
mask[t] = 1 means token t is a training target (predicted from tokens < t).

Used by data_tools.sft (writing data) and mtds.generate --chat (the same template for prompts).
"""

from __future__ import annotations

import os

ROLES = ("system", "user", "assistant")
TEMPLATES = ("auto", "default", "hf")
MARKERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def default_jinja(prefix: str = "") -> str:
    """The default template as a Hugging Face `chat_template` (Jinja), for an exported model
    (mtds.export_hf): `apply_chat_template(messages, add_generation_prompt=True)` renders the text
    whose tokens are ChatEncoder.prompt_ids', and a whole conversation the ids data_tools.sft trained
    on. `prefix`: the text of the tokenizer's leading special tokens (ChatEncoder.prefix, e.g. a BOS),
    which apply_chat_template does not add itself. The end of an assistant turn is `eos_token`, so
    the tokenizer must read special tokens in text (split_special_tokens false). Exact as long as
    no token of the tokenizer spans a marker's edge (the caveat of the module docstring)."""
    def literal(text: str) -> str:  # a Jinja string literal
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    marker = "{% if m['role'] == 'system' %}{{ " + literal(MARKERS["system"]) + " }}" \
             "{% elif m['role'] == 'user' %}{{ " + literal(MARKERS["user"]) + " }}" \
             "{% elif m['role'] == 'assistant' %}{{ " + literal(MARKERS["assistant"]) + " }}" \
             "{% else %}{{ raise_exception('unknown role ' + m['role'] + '; use system, user or assistant') }}" \
             "{% endif %}"
    return (("{{ " + literal(prefix) + " }}" if prefix else "") + "{% for m in messages %}" + marker
            + "{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ " + literal(MARKERS["assistant"]) + " }}{% endif %}")


class ChatError(ValueError):
    """A sample (or template) that cannot be encoded; the caller prefixes FILE:LINE."""


def messages_of(record) -> list[dict]:
    """The sample's messages, checked: raises ChatError naming what is wrong."""
    if not isinstance(record, dict):
        raise ChatError("not a JSON object")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ChatError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ChatError(f"messages[{i}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ChatError(f"messages[{i}] has unknown role {m['role']!r}; use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise ChatError(f"messages[{i}] content is {type(m['content']).__name__}, not a string")
        if not any(m["role"] == "assistant" for m in msgs):
            raise ChatError("chat has no assistant turn (nothing to train on)")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    missing = [k for k in ("prompt", "response") if k not in record]
    if missing:
        raise ChatError(f"missing key {missing[0]!r} (give 'messages', or 'prompt' and 'response')")
    for k in ("prompt", "response"):
        if not isinstance(record[k], str):
            raise ChatError(f"{k!r} is {type(record[k]).__name__}, not a string")
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]


class ChatEncoder:
    """Encodes chats with one tokenizer and template (see the module docstring).

    `tokenizer_model`: a sentencepiece .model or a Hugging Face tokenizer directory."""

    def __init__(self, tokenizer_model: str | os.PathLike, tokenizer_type: str = "auto", template: str = "auto"):
        from data_tools.hf_tokenizer import HUGGINGFACE, tokenizer_type as resolve_type

        path = os.fspath(tokenizer_model)
        if template not in TEMPLATES:
            raise ChatError(f"--template {template!r}: choose one of {', '.join(TEMPLATES)}")
        self.hf = self.sp = None
        if resolve_type(path, tokenizer_type) == HUGGINGFACE:
            from data_tools.hf_tokenizer import FastEncoder, fast_encoder_spec, load_hf_tokenizer, special_id

            self.hf = load_hf_tokenizer(path)
            self.eos = special_id(self.hf, "eos")
            self.prefix = FastEncoder(fast_encoder_spec(self.hf)).prefix.tolist()  # e.g. [BOS]
            has_template = bool(getattr(self.hf, "chat_template", None))
        else:
            from data_tools.spm import load_sentencepiece

            self.sp = load_sentencepiece(path)
            self.eos = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
            self.prefix = []  # preprocess writes no BOS for the project's sentencepiece models
            has_template = False
        if template == "hf" and not has_template:
            raise ChatError(f"{path}: --template hf needs a Hugging Face tokenizer with a chat_template; "
                            "use --template default")
        self.template = ("hf" if has_template else "default") if template == "auto" else template
        if self.eos is None:
            raise ChatError(f"{path}: tokenizer has no eos token to end a turn with; set eos_token "
                            "(tokenizer_config.json) or train it with `python -m data_tools.train_tokenizer`")
        self.path = path

    @property
    def vocab_size(self) -> int:
        return len(self.hf) if self.hf is not None else self.sp.get_piece_size()

    def text_ids(self, text: str) -> list[int]:
        """`text` as ids, without special tokens."""
        if not text:
            return []
        if self.hf is not None:
            return list(self.hf(text, add_special_tokens=False)["input_ids"])
        return list(self.sp.encode(text))

    def encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, loss mask) of a checked conversation (messages_of)."""
        if self.template == "hf":
            return self._encode_hf(messages)
        ids, mask = list(self.prefix), [0] * len(self.prefix)
        for m in messages:
            head = self.text_ids(MARKERS[m["role"]])
            if m["role"] == "assistant":
                body = self.text_ids(m["content"]) + [self.eos]
                ids += head + body
                mask += [0] * len(head) + [1] * len(body)
            else:
                body = self.text_ids(m["content"] + "\n")
                ids += head + body
                mask += [0] * (len(head) + len(body))
        return ids, mask

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation so far plus the start of the assistant's turn: what generation continues."""
        if self.template == "hf":
            return self._render(messages, generation_prompt=True)
        ids, _ = self.encode(messages)  # no assistant turn in `messages`: all prompt
        return ids + self.text_ids(MARKERS["assistant"])

    # -- Hugging Face chat_template ---------------------------------------------------------
    def _render(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        try:
            text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 -- jinja2's TemplateError, or the template's raise_exception
            raise ChatError(f"the tokenizer's chat_template refused this chat ({type(e).__name__}: "
                            f"{str(e).strip()[:120]})") from None
        return self.text_ids(text)

    def _encode_hf(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        ids = self._render(messages, generation_prompt=False)
        mask = [0] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = self._render(messages[:i], generation_prompt=True) if i else self._render([], True)
            end = self._render(messages[: i + 1], generation_prompt=False)
            if ids[: len(start)] != start or ids[: len(end)] != end or len(end) < len(start):
                raise ChatError(f"{self.path}: its chat_template does not tokenize prefix-stably (the conversation "
                                f"up to assistant turn {i} is not a token prefix of the whole), so the assistant "
                                "tokens cannot be found; use --template default")
            span = ids[len(start): len(end)]
            stop = len(span) - span[::-1].index(self.eos) if self.eos in span else len(span)
            mask[len(start): len(start) + stop] = [1] * stop  # content + end-of-turn, not what follows it
        return ids, mask
