"""Soft prompts per canvas: PEFT prompt tuning on a frozen foundation model (``adapter``), and their
export as virtual-token rows of one servable model folder (``export``)."""
