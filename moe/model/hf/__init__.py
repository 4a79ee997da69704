"""Our GPT and the stock Hugging Face classes: weight names both ways (names.py), the stock class that computes our
GPT (stock.py), the HF families AutoEP trains (families.py) and their router telemetry (autoep_stats.py)."""
