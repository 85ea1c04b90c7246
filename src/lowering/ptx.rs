//! Reading the PTX that `gpu-module-to-binary{format=isa}` leaves in a module.

use melior::ir::{
    attribute::{ArrayAttribute, StringAttribute},
    operation::{OperationLike, WalkOrder, WalkResult},
    Module,
};

/// The PTX of one serialized `gpu.module`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuModulePtx {
    /// The symbol of the `gpu.binary` op, i.e. of the `gpu.module` it came from.
    pub module_name: String,
    /// PTX assembly text, one entry point per kernel.
    pub ptx: String,
}

/// Collects the PTX of every `gpu.binary` in `module`, in module order; one per object for
/// binaries holding several targets. Objects not in assembly format are skipped.
pub fn extract_ptx(module: &Module) -> Vec<GpuModulePtx> {
    let mut found = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |operation| {
        if operation.name().as_string_ref().as_str() != Ok("gpu.binary") {
            return WalkResult::Advance;
        }
        let module_name = operation
            .attribute("sym_name")
            .ok()
            .and_then(|name| StringAttribute::try_from(name).ok())
            .map(|name| name.value().to_owned())
            .unwrap_or_default();
        let objects = operation.attribute("objects").ok().and_then(|objects| ArrayAttribute::try_from(objects).ok());
        for object in
            objects.iter().flat_map(|objects| (0..objects.len()).filter_map(|index| objects.element(index).ok()))
        {
            // The C API has no accessor for `#gpu.object`'s payload; its printed form is
            // `#gpu.object<target, properties = {...}, assembly = "escaped text">`.
            if let Some(ptx) = assembly_payload(&object.to_string()) {
                found.push(GpuModulePtx { module_name: module_name.clone(), ptx });
            }
        }
        WalkResult::Skip
    });
    found
}

/// Decodes the string after `assembly = ` in a printed `#gpu.object`. MLIR prints strings with
/// `\\` for a backslash and `\XX` (two hex digits) for quotes and non-printable bytes.
fn assembly_payload(printed_object: &str) -> Option<String> {
    const KEY: &str = "assembly = \"";
    let start = printed_object.find(KEY)? + KEY.len();
    let mut bytes = printed_object[start..].bytes();
    let mut decoded = Vec::new();
    loop {
        match bytes.next()? {
            b'"' => return String::from_utf8(decoded).ok(),
            b'\\' => match bytes.next()? {
                b'\\' => decoded.push(b'\\'),
                high => {
                    let low = bytes.next()?;
                    let hex = [high, low];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    decoded.push(u8::from_str_radix(hex, 16).ok()?);
                }
            },
            byte => decoded.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assembly_payload;

    #[test]
    fn assembly_payload_decodes_mlir_escapes() {
        let printed = r#"#gpu.object<#nvvm.target, properties = {O = 3 : i32}, assembly = "a\09b\0A\22q\22 \\ end">"#;
        assert_eq!(assembly_payload(printed).as_deref(), Some("a\tb\n\"q\" \\ end"));
    }

    #[test]
    fn assembly_payload_is_none_without_assembly() {
        assert_eq!(assembly_payload("#gpu.object<#nvvm.target, \"bin\">"), None);
    }
}
