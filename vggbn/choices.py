"""The values of the enumerated params that the library itself implements, named once: the params schema
(`vggbn.runner.params`) offers them and `vggbn.numerics.images` dispatches on them. No import: anything may read it."""

RESIZE_MODES = ("squash", "center_crop", "pad")
PREPROCESS_MODES = ("caffe", "tf", "torch", "none")
