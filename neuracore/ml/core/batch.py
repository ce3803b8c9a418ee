"""Keys of the batch dictionaries that flow from the dataset to an algorithm.

A batch is a plain dict (so `default_collate` and `accelerate.send_to_device` handle it):

- ``batch["inputs"][dt]``: vectors ``[B, T_in, D]`` float32, images ``[B, T_in, N_cam, C, H, W]``
  uint8 (converted to float on the device by the algorithm), for each input DataType value ``dt``
- ``batch["input_masks"][dt]``: ``[B, D]`` (vectors) or ``[B, N_cam]`` (images), 1 where the
  episode's robot has the item (cross-embodiment), 0 where the value is padding
- ``batch["outputs"][dt]``: ``[B, H, D]`` target chunk; ``batch["output_masks"][dt]``: ``[B, D]``
- ``batch["is_pad"]``: ``[B, H]`` bool, true where the chunk ran past the episode end
- ``batch["language"]``: list of B instruction strings (only when LANGUAGE is an input)
"""

INPUTS = "inputs"
INPUT_MASKS = "input_masks"
OUTPUTS = "outputs"
OUTPUT_MASKS = "output_masks"
IS_PAD = "is_pad"
LANGUAGE = "language"
