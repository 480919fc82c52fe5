"""The trainable model: backbone, head, on-device step and optimizers.

Import the submodules directly; this package stays light (TensorFlow loads only in
the modules that need it).
"""
