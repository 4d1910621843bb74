//! Builders for hclspec trees, the schema format Nomad requests from plugins.
//!
//! Inside an `Object`, Nomad passes each map key down as the name of a directly nested
//! `Attr` or `Block`, but not through a `Default`, so [`with_default`] names its `Attr`
//! explicitly.

use crate::proto::hclspec::{self, Spec, spec::Block as Kind};

pub(crate) fn object<'a>(attributes: impl IntoIterator<Item = (&'a str, Spec)>) -> Spec {
    let attributes = attributes
        .into_iter()
        .map(|(name, spec)| (name.to_owned(), spec))
        .collect();
    spec(Kind::Object(hclspec::Object { attributes }))
}

/// Builds an optional attribute of HCL type `ty`, such as `string` or `list(string)`.
pub(crate) fn optional(ty: &str) -> Spec {
    attr("", ty, false)
}

pub(crate) fn required(ty: &str) -> Spec {
    attr("", ty, true)
}

/// Builds an optional attribute `name` that takes the HCL expression `literal` when
/// unset.
pub(crate) fn with_default(name: &str, ty: &str, literal: &str) -> Spec {
    spec(Kind::Default(Box::new(hclspec::Default {
        primary: Some(Box::new(attr(name, ty, false))),
        default: Some(Box::new(spec(Kind::Literal(hclspec::Literal {
            value: literal.to_owned(),
        })))),
    })))
}

/// Builds a block that appears at most once, named like its key.
pub(crate) fn block(nested: Spec) -> Spec {
    spec(Kind::BlockValue(Box::new(hclspec::Block {
        name: String::new(),
        required: false,
        nested: Some(Box::new(nested)),
    })))
}

/// Builds a block that may repeat, named like its key.
pub(crate) fn block_list(nested: Spec) -> Spec {
    spec(Kind::BlockList(Box::new(hclspec::BlockList {
        name: String::new(),
        min_items: 0,
        max_items: 0,
        nested: Some(Box::new(nested)),
    })))
}

/// Quotes `text` as an HCL string literal.
pub(crate) fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn attr(name: &str, ty: &str, required: bool) -> Spec {
    spec(Kind::Attr(hclspec::Attr {
        name: name.to_owned(),
        r#type: ty.to_owned(),
        required,
    }))
}

fn spec(kind: Kind) -> Spec {
    Spec { block: Some(kind) }
}
