"""Built-in red-teaming: run an attack and benign corpus through the guards and the model."""
