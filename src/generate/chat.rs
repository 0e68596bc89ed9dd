//! The chat template a GGUF carries (`tokenizer.chat_template`, Jinja), rendered with
//! minijinja the way `transformers`' `apply_chat_template` renders it: `trim_blocks` and
//! `lstrip_blocks` on, `messages`, `add_generation_prompt`, `bos_token`, `eos_token` in scope,
//! `raise_exception` defined, and Python string methods (`.strip()`, …) through minijinja-contrib.

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Why a conversation could not be rendered into a prompt.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template; send a plain prompt instead")]
    NoTemplate,
    #[error("the chat template rejected the conversation: {0}")]
    Render(String),
}

/// A parsed-on-use chat template plus the special tokens it may refer to.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template and the texts of the model's BOS/EOS tokens.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        Self {
            source,
            bos_token,
            eos_token,
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends where the assistant's
    /// answer starts.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatError::Render(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.render_str(
            &self.source,
            context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
        )
        .map_err(|e| ChatError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\
             {{ m.content.strip() }}|{% endfor %}{% if add_generation_prompt %}>{% endif %}"
                .into(),
            "<s>".into(),
            "</s>".into(),
        );
        let msg = |role: &str, content: &str| ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        assert_eq!(t.render(&[msg("user", "  hi ")], true).unwrap(), "hi|>");
        let err = t.render(&[msg("bad", "x")], false).unwrap_err();
        assert!(err.to_string().contains("no bad roles"), "{err}");
    }
}
