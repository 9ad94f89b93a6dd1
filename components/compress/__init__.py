"""Go big, then go small: distillation (SFT + KD), structured pruning, quantization with
the LM head kept fp32. Runnable without Ray; ``pipelines.compress_stages`` wires it in."""
