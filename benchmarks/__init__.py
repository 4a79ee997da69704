"""Measurements (throughput, MoE layer, GPU MFU, A/B speed tests, MoE against dense) and their results/."""
