//! torchvision renamed 26 state-dict entries of Mask R-CNN in 0.13 (the FPN and heads became
//! `Conv2dNormActivation` sequences). Checkpoints saved before, among them the published COCO
//! weights, use the old names; torchvision renames them on load, and so does mrc.

/// The current name of a pre-0.13 torchvision name, or `None` if `name` is not one.
pub fn current_name(name: &str) -> Option<String> {
    if let Some(param) = name.strip_prefix("rpn.head.conv.") {
        return weight_or_bias(param).map(|p| format!("rpn.head.conv.0.0.{p}"));
    }
    for blocks in ["backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks."] {
        if let Some(rest) = name.strip_prefix(blocks) {
            let (index, param) = rest.split_once('.')?;
            let param = weight_or_bias(param)?;
            let index = decimal(index)?;
            return Some(format!("{blocks}{index}.0.{param}"));
        }
    }
    let rest = name.strip_prefix("roi_heads.mask_head.mask_fcn")?;
    let (number, param) = rest.split_once('.')?;
    let param = weight_or_bias(param)?;
    let layer = decimal(number)?.checked_sub(1)?;
    Some(format!("roi_heads.mask_head.{layer}.0.{param}"))
}

fn weight_or_bias(param: &str) -> Option<&str> {
    matches!(param, "weight" | "bias").then_some(param)
}

fn decimal(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::current_name;

    #[test]
    fn renames_every_old_form() {
        let cases = [
            ("rpn.head.conv.weight", "rpn.head.conv.0.0.weight"),
            ("rpn.head.conv.bias", "rpn.head.conv.0.0.bias"),
            ("backbone.fpn.inner_blocks.3.weight", "backbone.fpn.inner_blocks.3.0.weight"),
            ("backbone.fpn.layer_blocks.0.bias", "backbone.fpn.layer_blocks.0.0.bias"),
            ("roi_heads.mask_head.mask_fcn1.weight", "roi_heads.mask_head.0.0.weight"),
            ("roi_heads.mask_head.mask_fcn4.bias", "roi_heads.mask_head.3.0.bias"),
        ];
        for (old, new) in cases {
            assert_eq!(current_name(old).as_deref(), Some(new), "{old}");
        }
    }

    #[test]
    fn leaves_current_and_unrelated_names() {
        for name in [
            "rpn.head.conv.0.0.weight",
            "backbone.fpn.inner_blocks.3.0.weight",
            "roi_heads.mask_head.0.0.weight",
            "roi_heads.mask_head.mask_fcn0.weight",
            "roi_heads.mask_head.mask_fcnx.weight",
            "backbone.fpn.layer_blocks.a.weight",
            "rpn.head.conv.running_mean",
            "backbone.body.conv1.weight",
        ] {
            assert_eq!(current_name(name), None, "{name}");
        }
    }
}
