"""Multi-head attention over (batch, seq, embed) inputs, built from Linear, reshape, permute, @ and softmax."""
from .._tensor import Tensor
from . import functional as F
from .layers import Linear
from .module import Module


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention.

    forward(query, key=None, value=None, mask=None, key_padding_mask=None, is_causal=False):
      query (batch, seq_q, embed), key/value (batch, seq_k, embed) (unbatched (seq, embed) works too);
      self-attention when key and value are None (value defaults to key);
      mask: bool (True = masked out) or additive float, of shape (seq_q, seq_k), (batch, seq_q, seq_k),
      (batch * heads, seq_q, seq_k) or anything broadcastable to (batch, heads, seq_q, seq_k);
      key_padding_mask: bool (batch, seq_k), True = padding (never attended to).
    Returns the (batch, seq_q, embed) output only.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, dtype=None, batch_first=True):
        super().__init__()
        if not isinstance(embed_dim, int) or not isinstance(num_heads, int) or embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiHeadAttention: embed_dim and num_heads must be positive ints, got "
                             f"{embed_dim!r} and {num_heads!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        if not batch_first:
            raise NotImplementedError("MultiHeadAttention: only batch_first=True ((batch, seq, embed) inputs) "
                                      "is supported")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.q_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.k_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.v_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"

    def _who(self):
        return f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads})"

    def _check(self, name, t):
        if not isinstance(t, Tensor):
            raise TypeError(f"{self._who()}: {name} must be a Tensor, got {type(t).__name__}")
        if t.ndim != 3 or t.shape[-1] != self.embed_dim:
            raise ValueError(f"{self._who()}: {name} must have shape (batch, seq, {self.embed_dim}), got {t.shape}")

    def _heads(self, t):
        b, s, _ = t.shape
        return t.reshape(b, s, self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def _shape_mask(self, mask, batch, seq_q, seq_k):
        mask = F.as_mask(self._who(), mask, self.q_proj.weight)
        if mask.ndim == 3:
            if mask.shape[0] == batch * self.num_heads and self.num_heads > 1:
                mask = mask.reshape(batch, self.num_heads, mask.shape[1], mask.shape[2])
            elif mask.shape[0] in (batch, 1):
                mask = mask.unsqueeze(1)
            else:
                raise ValueError(f"{self._who()}: a 3-D mask must have shape ({batch}, {seq_q}, {seq_k}) or "
                                 f"({batch * self.num_heads}, {seq_q}, {seq_k}), got {mask.shape}")
        return mask

    def forward(self, query, key=None, value=None, mask=None, key_padding_mask=None, is_causal=False,
                attn_mask=None):
        if attn_mask is not None:
            if mask is not None:
                raise ValueError(f"{self._who()}: pass mask or attn_mask, not both")
            mask = attn_mask
        unbatched = isinstance(query, Tensor) and query.ndim == 2
        if unbatched:
            query = query.unsqueeze(0)
            key = key.unsqueeze(0) if isinstance(key, Tensor) else key
            value = value.unsqueeze(0) if isinstance(value, Tensor) else value
        key = query if key is None else key
        value = key if value is None else value
        self._check("query", query)
        self._check("key", key)
        self._check("value", value)
        b, sq, e = query.shape
        sk = key.shape[1]
        if key.shape[0] != b or value.shape[0] != b:
            raise ValueError(f"{self._who()}: batch sizes differ: query {query.shape}, key {key.shape}, "
                             f"value {value.shape}")
        if value.shape[1] != sk:
            raise ValueError(f"{self._who()}: key {key.shape} and value {value.shape} differ in sequence length")
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        masks = []
        if mask is not None:
            masks.append(self._shape_mask(mask, b, sq, sk))
        if key_padding_mask is not None:
            kpm = F.as_mask(self._who(), key_padding_mask, q)
            if tuple(kpm.shape) != (b, sk):
                raise ValueError(f"{self._who()}: key_padding_mask must have shape ({b}, {sk}), got {kpm.shape}")
            masks.append(kpm.reshape(b, 1, 1, sk))
        if is_causal:
            import numpy as np
            from ..creation import tensor
            masks.append(tensor(np.triu(np.ones((sq, sk), dtype=bool), k=1)))
        out = F.attention(q, k, v, masks, self.dropout, self.training, who=self._who())
        out = out.permute(0, 2, 1, 3).reshape(b, sq, e)
        out = self.out_proj(out)
        return out.reshape(sq, e) if unbatched else out

