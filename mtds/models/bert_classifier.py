"""megatron-core BertModel with a sequence-classification head (kind bert_cls): embeddings, encoder
and megatron-core's Pooler (dense + tanh on the [CLS] position) from BertModel, then dropout and a
linear layer to one logit per class, as Hugging Face's `MegatronBertForSequenceClassification` and
Megatron-LM's legacy `tasks/` classification model do.

Why a subclass with its own forward: BertModel always builds and runs the masked-LM head and
output layer ([b, s, vocab] logits) and sizes its binary head at 2 classes. A classifier needs
neither: running the LM head would cost a vocab-sized matmul per token and leave its parameters
without gradients. The forward below is the first half of BertModel.forward (mask, positions,
embedding, encoder, pooler) on megatron-core's own modules. The head is called
`classification_head`, not `binary_head`, so a pretrained BERT's sentence-order head (a different
task with 2 outputs) is never loaded into it by `training.init_from`: it starts fresh, with a note.
"""

from __future__ import annotations

import torch
from megatron.core.models.bert.pooler import Pooler
from megatron.core.transformer.utils import get_linear_layer

from mtds.models.attention import SDPABertModel


class BertClassifier(SDPABertModel):
    def __init__(self, *, num_classes: int, **bert_args):
        """BertModel arguments (two token types, so a text pair is segments 0 and 1), no binary head."""
        super().__init__(add_binary_head=False, **bert_args)
        config = self.config
        del self.lm_head, self.output_layer  # see the module docstring
        self.pooler = Pooler(config.hidden_size, config.init_method, config, config.sequence_parallel)
        self.dropout = torch.nn.Dropout(config.hidden_dropout)
        self.classification_head = get_linear_layer(config.hidden_size, num_classes, config.init_method,
                                                    config.perform_initialization)
        self.num_classes = num_classes

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokentype_ids: torch.Tensor | None = None):
        """[b, s] ids, [b, s] padding mask (1 = token), [b, s] token types -> [b, num_classes] logits."""
        extended = self.bert_extended_attention_mask(attention_mask)  # [b, 1, 1, s], True = masked
        position_ids = self.bert_position_ids(input_ids)  # [b, s]
        hidden = self.embedding(input_ids=input_ids, position_ids=position_ids, tokentype_ids=tokentype_ids)  # [s, b, h]
        hidden = self.encoder(hidden_states=hidden, attention_mask=extended)  # [s, b, h], final LayerNorm applied
        pooled = self.pooler(hidden, 0)  # [b, h]
        return self.classification_head(self.dropout(pooled))  # [b, num_classes]
