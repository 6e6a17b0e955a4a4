//! The results: figures in order, each with a JSON key, a label and a unit,
//! printed as a table or as one JSON object.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::{Value, json};

/// The results: figures in order, rendered as a table or as JSON.
#[derive(Default)]
pub struct Report {
    rows: Vec<(Cow<'static, str>, Cow<'static, str>, Value, &'static str)>,
    pub failed: bool,
    pub failures: Vec<String>,
}

impl Report {
    pub fn add(
        &mut self,
        key: impl Into<Cow<'static, str>>,
        label: impl Into<Cow<'static, str>>,
        value: impl Into<Value>,
        unit: &'static str,
    ) {
        self.rows
            .push((key.into(), label.into(), value.into(), unit));
    }

    pub fn fail(&mut self, why: String) {
        self.failed = true;
        self.failures.push(why);
    }

    pub fn json(&self) -> Value {
        let mut object = serde_json::Map::new();
        for (key, _, value, _) in &self.rows {
            object.insert(key.to_string(), value.clone());
        }
        object.insert("ok".into(), Value::Bool(!self.failed));
        object.insert("failures".into(), json!(self.failures));
        Value::Object(object)
    }

    pub fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(_, l, _, _)| l.len())
            .max()
            .unwrap_or(0);
        let mut out = format!("{:width$}  value\n", "figure");
        for (_, label, value, unit) in &self.rows {
            let value = match value {
                Value::Null => "n/a".to_owned(),
                Value::String(s) => s.clone(),
                other => format!("{other} {unit}").trim_end().to_owned(),
            };
            out.push_str(&format!("{label:width$}  {value}\n"));
        }
        out.push_str(&format!(
            "{:width$}  {}\n",
            "result",
            if self.failed { "FAILED" } else { "ok" }
        ));
        out
    }
}

/// Rounds to 3 decimals, or null.
pub fn num(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

pub fn secs(duration: Duration) -> Value {
    num(Some(duration.as_secs_f64()))
}
