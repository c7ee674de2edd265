"""Fine-tuning: classification and instruction data, loops and outputs."""
