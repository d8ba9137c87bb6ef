"""What the installed Pillow can serve as a reference for (tests of the PIL-exact resize)."""


def pass_order_matters_in_pillow13(in_hw, out_hw) -> bool:
    """Pillow 13 (Resample.c: ImagingResampleInner) runs the vertical pass first when the
    height loses more than twice as many pixels as the width; with two passes that changes the
    intermediate rounding. Earlier Pillows always run the horizontal pass first."""
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    two_passes = in_h != out_h and in_w != out_w
    return two_passes and in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)
