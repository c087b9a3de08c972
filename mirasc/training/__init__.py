"""Training generated layers: language models around them (`models`), synthetic and text tasks
(`data`), and the trainer behind `mirasc train` (`trainer`)."""
