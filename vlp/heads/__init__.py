"""Trainable modules that objectives own (prediction heads, fusion layers, light decoders).

They are plain ``nn.Module``s built from explicit widths; an objective builds them once the
model's widths and vocabulary are known, so they train, shard and checkpoint with it.
"""
