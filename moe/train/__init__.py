"""Training: the loop (trainer.py) over a model spec per MoE path (model_spec.py), the engine (engine.py, optim.py,
schedule.py), one step (accumulate.py, or pipeline_step.py for a pipeline), clipping (grad_norm.py), activation
checkpointing and compile, and what a step reports (metrics.py, throughput.py, router_telemetry.py)."""
