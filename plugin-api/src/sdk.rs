//! The safe side of the SDK: one trait a plugin implements, with a default for every role it does not play.
//!
//! A plugin type is created once per connector instance from that instance's JSON settings
//! ([`Plugin::configure`]); the host may call one instance from several threads at once, so methods take `&self`.

use crate::wire::{
    ops, FileRequest, HttpRequestSpec, IntakeOutcome, IntakeRequest, MailOutcome, MailRequest,
    Manifest, ParseReply, PluginError, PollReply, PollResponse, PollStart, SinkInput, SinkStep,
    SniffReply, SniffRequest,
};

/// A connector plugin. Implement the methods of the roles named in [`Plugin::manifest`];
/// the others answer `unsupported`.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// Name, version and roles. Called before any instance exists.
    fn manifest() -> Manifest;

    /// Create an instance from its settings (the `[connector.settings]` table of the host's config as JSON).
    /// Reject bad settings with [`PluginError::bad_config`] naming the key.
    fn configure(settings: serde_json::Value) -> Result<Self, PluginError>;

    /// `intake`: an inbound HTTP request.
    fn intake(&self, request: IntakeRequest) -> Result<IntakeOutcome, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::INTAKE))
    }

    /// `file`: how sure are you that this file is yours (0 = not mine)?
    fn sniff(&self, request: SniffRequest) -> SniffReply {
        let _ = request;
        SniffReply { confidence: 0 }
    }

    /// `file`: parse a whole file. Any bad entry fails the whole file, naming where.
    fn parse(&self, request: FileRequest) -> Result<ParseReply, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::PARSE))
    }

    /// `mail`: a raw RFC 822 message.
    fn mail(&self, request: MailRequest) -> Result<MailOutcome, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(ops::MAIL))
    }

    /// `poll`: the request to send, given the last cursor.
    fn poll_start(&self, start: PollStart) -> Result<HttpRequestSpec, PluginError> {
        let _ = start;
        Err(PluginError::unsupported(ops::POLL_START))
    }

    /// `poll`: records from the response.
    fn poll_response(&self, response: PollResponse) -> Result<PollReply, PluginError> {
        let _ = response;
        Err(PluginError::unsupported(ops::POLL_RESPONSE))
    }

    /// `sink`: the next step of delivering an event.
    fn sink_step(&self, input: SinkInput) -> Result<SinkStep, PluginError> {
        let _ = input;
        Ok(SinkStep::Ignored)
    }
}
