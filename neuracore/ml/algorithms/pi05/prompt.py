"""pi0.5's prompt: the instruction and the discretised robot state as language tokens, built on the device.

The prompt reproduced is openpi's pi05 format (`PaligemmaTokenizer.tokenize` with a state; LeRobot's
`Pi05PrepareStateTokenizerProcessorStep` writes the same string)::

    <bos>Task: {instruction}, State: {s_0} {s_1} ... {s_n-1};\\nAction: 

`instruction` is cleaned as in pi0 (stripped, `_` and newlines to spaces); `s_i` is state value i,
normalised to [-1, 1], as an integer bin 0..255 of 256 equal bins over [-1, 1]
(`np.digitize(s, np.linspace(-1, 1, 257)[:-1]) - 1`; values below -1, possible only without quantile
normalisation, go to bin 0 instead of openpi's -1). Only the robot's real state values are written
(no padding to `max_state_dim`); an item the robot lacks (input mask 0) is left out of the prompt.

The state never goes back to the host: the prompt is tokenised in three pieces, each to a fixed number
of slots with masked padding after its real tokens:

- `Task: {instruction}, State:` with bos, on the host (`task_tokens`, strings), `task_len` slots;
- every bin's ` {b}` (leading space), tokenised once at construction into a `[256, K]` table, gathered on
  the device for each state value (`K` = the longest bin string's token count);
- `;\\nAction: `, tokenised once.

Positions are `cumsum(mask) - 1` and padding is never attended to, so the masked slots between the pieces
change nothing: the model sees exactly the contiguous prompt. It equals openpi's single tokenisation
whenever the tokenizer does not merge tokens across these piece boundaries (the space before each number
and the `;` after the last one); a prompt longer than `max_token_len` loses the end of its instruction
(openpi cuts the end of the whole prompt, i.e. the state and `Action:`).
"""

from __future__ import annotations

import torch
from torch import nn

from neuracore.ml.algorithms.pi0.tokenizer import PromptTokenizer, clean_prompt, pad_rows
from neuracore.ml.core.errors import ConfigError

STATE_BINS = 256
TASK_FORMAT = "Task: {}, State:"
ANSWER = ";\nAction: "


def state_bins(state: torch.Tensor) -> torch.Tensor:
    """Normalised state → bin 0..255, exactly openpi's digitize (x * 128 is exact in floating point)."""
    return (torch.floor(state.float() * (STATE_BINS // 2)).long() + STATE_BINS // 2).clamp(0, STATE_BINS - 1)


class StatePrompt(nn.Module):
    """Token ids of pi0.5's prompt: the host tokenises the instruction, the device writes the state."""

    def __init__(self, tokenizer: PromptTokenizer, state_dim: int, max_len: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        bins = tokenizer.encode([f" {b}" for b in range(STATE_BINS)])
        self.bin_width = max(len(row) for row in bins)
        bin_ids, bin_mask = pad_rows(bins, self.bin_width, tokenizer.pad_id)
        answer = tokenizer.encode([ANSWER])[0]
        # Not persistent: derived from the tokenizer, which travels with the export on its own.
        self.register_buffer("bin_ids", bin_ids, persistent=False)
        self.register_buffer("bin_mask", bin_mask, persistent=False)
        self.register_buffer("answer_ids", torch.tensor(answer, dtype=torch.long), persistent=False)
        self.task_len = max_len - state_dim * self.bin_width - len(answer)
        minimum = state_dim * self.bin_width + len(answer) + 8
        if self.task_len < 8:
            raise ConfigError(
                f"algorithm.max_token_len={max_len}: too small for {state_dim} state values in the prompt "
                f"({self.bin_width} tokens each) plus the instruction; use at least {minimum}"
            )

    def task_tokens(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Host side: `<bos>Task: {instruction}, State:` as `[B, task_len]` ids and mask."""
        rows = self.tokenizer.encode([TASK_FORMAT.format(clean_prompt(p)) for p in prompts])
        return pad_rows([[self.tokenizer.bos_id, *row] for row in rows], self.task_len, self.tokenizer.pad_id)

    def forward(self, task_ids: torch.Tensor, task_mask: torch.Tensor, state: torch.Tensor,
                item_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Device side: the whole prompt `[B, max_len]` (ids, real-token mask) from the task tokens and state."""
        b = state.shape[0]
        bins = state_bins(state)  # [B, n]
        ids = self.bin_ids[bins].flatten(1)
        mask = (self.bin_mask[bins] & (item_mask > 0)[..., None]).flatten(1)
        answer = self.answer_ids[None].expand(b, -1)
        device = ids.device
        return (
            torch.cat([task_ids.to(device), ids, answer], 1),
            torch.cat([task_mask.to(device), mask, torch.ones_like(answer, dtype=torch.bool)], 1),
        )
