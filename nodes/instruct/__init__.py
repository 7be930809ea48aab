"""Instruction editing: SpatialInstruction, MoveObject, InstructGuider."""
