//! The TensorBoard messages the engine writes, declared by hand with the field numbers of TensorFlow's
//! `event.proto` and `summary.proto` (those numbers are the schema; fields the engine never writes are left
//! out, which protobuf readers accept).

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the event belongs to (the x axis of TensorBoard's scalar charts).
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`: the payload of an event.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first record of every file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Scalars logged at the event's step.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session status; `START` after a resume makes TensorBoard drop the older events of later steps.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`: a list of tagged values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: one tagged scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// Chart name, `/` groups charts (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value. A oneof member, so 0.0 is still written (a plain proto3 float of 0 would be omitted and
    /// TensorBoard would see no value at all).
    #[prost(oneof = "Value", tags = "2")]
    pub value: Option<Value>,
}

/// `Summary.Value.value`: the kinds of value the engine writes.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionLog.SessionStatus`: 1 = START.
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// Checkpoint the session started from.
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    /// Free text.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

impl Event {
    /// The scalars `(tag, value)` of a summary event (empty for other events).
    pub fn scalars(&self) -> Vec<(String, f32)> {
        match &self.what {
            Some(What::Summary(s)) => s
                .value
                .iter()
                .filter_map(|v| v.value.as_ref().map(|Value::SimpleValue(x)| (v.tag.clone(), *x)))
                .collect(),
            _ => Vec::new(),
        }
    }
}
