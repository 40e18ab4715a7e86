//! Killing and starting a broker host from inside a scenario.
//!
//! `Sim::crash` and `Sim::bounce` exist only outside the simulation, so a test's client asks
//! through a [`HostSwitch`] and [`step_until_done`] carries the request out between two steps.
//! A kill resets the host's connections from inside first and takes the host down one step
//! later, as the kernel resets a dead process's connections.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// How long [`HostSwitch::kill`] and [`HostSwitch::start`] wait (simulated time) for the step
/// loop to carry them out.
const CARRIED_OUT_WITHIN: Duration = Duration::from_secs(10);

/// What a scenario asks for.
#[derive(Debug, Clone, Copy)]
enum Request {
    Kill,
    Start,
}

/// A scenario's handle on the broker host; clones share it.
#[derive(Debug, Clone, Default)]
pub struct HostSwitch {
    asked: Rc<RefCell<VecDeque<Request>>>,
    done: Rc<Cell<usize>>,
}

impl HostSwitch {
    /// Kills the broker process: its connections are reset and the host is down once this
    /// returns.
    pub async fn kill(&self) {
        self.ask(Request::Kill).await;
    }

    /// Starts the broker process again (on what outlives it, such as a JetStream store).
    pub async fn start(&self) {
        self.ask(Request::Start).await;
    }

    async fn ask(&self, request: Request) {
        let target = self.done.get() + self.asked.borrow().len() + 1;
        self.asked.borrow_mut().push_back(request);
        let done = tokio::time::timeout(CARRIED_OUT_WITHIN, async {
            while self.done.get() < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(done.is_ok(), "{request:?} was not carried out");
    }
}

/// Steps `sim` until its clients are done, carrying out what `switch` was asked for on `host`;
/// `disconnect_all` resets the host's connections from inside before a kill. Panics if the
/// simulation fails.
pub fn step_until_done(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    switch: &HostSwitch,
    disconnect_all: impl Fn(),
) {
    let step = |sim: &mut turmoil::Sim<'_>| match sim.step() {
        Ok(finished) => finished,
        Err(error) => panic!("simulation failed: {error}"),
    };
    while !step(sim) {
        let next = switch.asked.borrow_mut().pop_front();
        if let Some(request) = next {
            match request {
                Request::Kill => {
                    disconnect_all();
                    assert!(!step(sim), "the scenario ended during a kill");
                    sim.crash(host);
                }
                Request::Start => sim.bounce(host),
            }
            switch.done.set(switch.done.get() + 1);
        }
    }
}
