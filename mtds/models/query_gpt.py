"""GPTModel for tasks whose extra tokens sit at given positions and alone carry the loss (the GPT family
builds it for tasks that ask for `query_tokens`: permutation LM's query tokens, at their targets' positions):
- RoPE follows the position ids it is given, as a learned position table does. megatron-core's GPTModel
  hands the learned table its `position_ids` but computes RoPE for 0 .. s-1 whatever the ids say
  (`_preprocess`: `rotary_pos_emb(rotary_seq_len)`), so a token appended after the sequence could not
  claim the position of a token inside it. Here the rotary angles are looked up at `position_ids`, per
  sample: [s, b, 1, d] where megatron has [s, 1, 1, d] (its unfused `apply_rotary_pos_emb` broadcasts
  either over heads). With position ids 0 .. s-1 that is exactly GPTModel's.
- `forward(..., logits_of_last=K)` runs the output layer (and the loss, with labels) on the last K
  positions only: [b, K, V] logits or [b, K] losses. The T content positions carry no loss, and the
  output layer over them would cost 2 x hidden x vocab FLOPs each for nothing.
No parameters and no state-dict keys of its own: checkpoints and the Hugging Face mapping are GPTModel's.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel


class QueryGPTModel(GPTModel):
    """GPTModel with RoPE at `position_ids` [b, s] (training and full-context forwards; a KV-cache
    inference forward keeps megatron's own handling) and logits of the last positions on request."""

    _logits_of_last: int | None = None

    def forward(self, input_ids, position_ids, attention_mask, *args, logits_of_last: int | None = None, **kwargs):
        self._logits_of_last = logits_of_last
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        finally:
            self._logits_of_last = None

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None, **kwargs):
        out = super()._preprocess(input_ids, position_ids, decoder_input=decoder_input,
                                  inference_context=inference_context, **kwargs)
        rotary = out[1]
        if rotary is None or position_ids is None or inference_context is not None:
            return out
        table = self.rotary_pos_emb.get_emb(int(position_ids.max()) + 1)  # [p, 1, 1, d] angles of 0 .. p-1
        at_ids = table[position_ids.t()].squeeze(2)  # [s, b] -> [s, b, 1, 1, d] -> [s, b, 1, d]
        return (out[0], at_ids.to(rotary.dtype), *out[2:])

    def _postprocess(self, hidden_states, *args, **kwargs):
        if self._logits_of_last:
            hidden_states = hidden_states[-self._logits_of_last:]  # [s, b, h] -> [K, b, h]
        return super()._postprocess(hidden_states, *args, **kwargs)
