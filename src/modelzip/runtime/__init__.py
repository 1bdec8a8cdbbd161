"""Running compressed models: ONNX export, int8 operator quantization, onnxruntime sessions
and the on-board runner. Keep this module import-light: the runner must load without torch,
so submodules are imported where they are used, never from here."""
