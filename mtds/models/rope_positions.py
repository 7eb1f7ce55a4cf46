"""GPTModel whose rotary embedding follows the position ids it is given (the GPT family builds it for
tasks that ask for `rope_at_position_ids`: permutation LM's query tokens sit at their targets' positions).

Why: megatron-core's GPTModel hands the learned position table its `position_ids`, but computes RoPE
for positions 0 .. s-1 whatever the ids say (`_preprocess`: `rotary_pos_emb(rotary_seq_len)`), so a
token appended after the sequence could not claim the position of a token inside it. This subclass
looks the rotary angles up at `position_ids` instead, per sample: [s, b, 1, d] where megatron has
[s, 1, 1, d] (megatron's unfused `apply_rotary_pos_emb` broadcasts either over heads). With
`position_ids` = 0 .. s-1 it computes exactly what GPTModel does. No parameters and no state-dict
keys of its own: checkpoints and the Hugging Face mapping are GPTModel's.
"""

from __future__ import annotations

from megatron.core.models.gpt import GPTModel


class GPTModelRopeAtPositions(GPTModel):
    """GPTModel with RoPE at `position_ids` [b, s] (training and full-context forwards; a KV-cache
    inference forward keeps megatron's own handling)."""

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None, **kwargs):
        out = super()._preprocess(input_ids, position_ids, decoder_input=decoder_input,
                                  inference_context=inference_context, **kwargs)
        rotary = out[1]
        if rotary is None or position_ids is None or inference_context is not None:
            return out
        table = self.rotary_pos_emb.get_emb(int(position_ids.max()) + 1)  # [p, 1, 1, d] angles of 0 .. p-1
        at_ids = table[position_ids.t()].squeeze(2)  # [s, b] -> [s, b, 1, 1, d] -> [s, b, 1, d]
        return (out[0], at_ids.to(rotary.dtype), *out[2:])
