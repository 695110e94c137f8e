"""Component names, one scheme everywhere (docs/definitions.md#component-names): EAP-IG's node names."""


def component_name(layer: int, head: int | None = None, neuron: int | None = None) -> str:
    """``a{layer}.h{head}`` for an attention head, ``m{layer}`` for an MLP, ``m{layer}.n{neuron}`` for one MLP
    neuron."""
    if head is not None and neuron is not None:
        raise ValueError(f"a component is a head or a neuron, not both (layer {layer}, head {head}, neuron {neuron})")
    if head is not None:
        return f"a{layer}.h{head}"
    return f"m{layer}" if neuron is None else f"m{layer}.n{neuron}"
