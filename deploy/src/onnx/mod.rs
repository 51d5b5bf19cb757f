//! ONNX export: [`proto`] holds the schema's messages, [`builder`] a small writer of graphs in them, and
//! [`lower`] turns each op of the graph IR into ONNX nodes. [`export_model`] is the entry point.

pub mod builder;
pub mod lower;
pub mod model;
pub mod proto;

pub use lower::{QdqNode, QdqPlan};
pub use model::{export_model, ExportError, ModelView, OPSET};
