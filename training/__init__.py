"""Training pipeline for the shipped compact model: data engine (labelled, synthetic, pseudo objects),
views that match inference, simulated clicks, two-stage training of the backbone and the GRU corrector.

    python -m training --config training/configs/compact_cpu.json [--resume]
"""
