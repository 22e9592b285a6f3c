"""The runtime core: model, checkpoint I/O, faces and alignment, the edit session and the
edit service. Never imports engine.tools, Qt or the editor."""
