"""The arithmetic paper's circuit localization: IE maps by activation patching, neuron importance, mean-ablation
circuits and their faithfulness, linear probes and attention analysis."""
