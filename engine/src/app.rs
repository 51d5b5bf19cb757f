//! The App: a bevy_ecs [`World`] holding the run's data and schedules, plus the [`Registry`]; and the
//! [`Plugin`] trait, the one way features are added — built-in and user features alike.
//!
//! ```no_run
//! use ecstrain_engine::app::{App, Plugin};
//! use ecstrain_systems::sets::{StepSet, TrainStep};
//!
//! /// A user plugin: clip every gradient to [-1, 1] after the Reduce stage.
//! struct ClipByValue;
//! impl Plugin for ClipByValue {
//!     fn build(&self, app: &mut App) {
//!         app.add_systems(TrainStep, clip.in_set(StepSet::Reduce));
//!     }
//! }
//! fn clip(mut grads: bevy_ecs::prelude::ResMut<ecstrain_components::Grads>) {
//!     grads.0.data.iter_mut().for_each(|g| *g = g.clamp(-1.0, 1.0));
//! }
//! # use bevy_ecs::prelude::IntoScheduleConfigs;
//! ```

use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{IntoScheduleConfigs, ScheduleLabel, Schedules, SingleThreadedExecutor};
use bevy_ecs::system::ScheduleSystem;
use ecstrain_components::{RunFailure, RunInfo};
use ecstrain_systems::sets::*;

use crate::registry::Registry;

/// A feature: adds resources, components, systems or registry entries to an [`App`].
pub trait Plugin {
    /// Installs the feature.
    fn build(&self, app: &mut App);
    /// Name for messages.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

impl<F: Fn(&mut App)> Plugin for F {
    fn build(&self, app: &mut App) {
        self(app)
    }
}

/// The training application: data in `world`, behaviour in its schedules, builders in `registry`.
pub struct App {
    /// Resources, parameter entities and schedules.
    pub world: World,
    /// Registered builders.
    pub registry: Registry,
}

/// Every schedule of a run, in the order the runner uses them.
pub fn schedule_labels() -> Vec<bevy_ecs::schedule::InternedScheduleLabel> {
    vec![
        RunStart.intern(),
        DataEpochStart.intern(),
        EpochStart.intern(),
        TrainStep.intern(),
        EpochEnd.intern(),
        ValidationStart.intern(),
        ValidationStep.intern(),
        ValidationEnd.intern(),
        RunEnd.intern(),
        Flush.intern(),
    ]
}

/// Run condition: no system has reported a [`RunFailure`] (true when the resource is absent).
pub fn no_failure(failure: Option<Res<RunFailure>>) -> bool {
    failure.is_none_or(|f| f.0.is_none())
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// An empty app: the schedules exist, with their ordered sets, and run single-threaded (a training step
    /// has few, heavy systems; parallelism lives inside the kernels, see facts.md).
    pub fn new() -> App {
        let mut world = World::new();
        let mut schedules = Schedules::default();
        for label in schedule_labels() {
            let mut s = Schedule::new(label);
            // `new()`, not `default()`: only `new()` applies deferred commands at the end of the schedule.
            s.set_executor(SingleThreadedExecutor::new());
            schedules.insert(s);
        }
        world.insert_resource(schedules);
        let mut app = App { world, registry: Registry::default() };
        let order = StepSet::ORDER;
        for label in [TrainStep.intern(), ValidationStep.intern()] {
            app.schedules().configure_sets(
                label,
                (order[0], order[1], order[2], order[3], order[4], order[5], order[6], order[7], order[8]).chain(),
            );
        }
        // A step whose batch failed to load (or that follows any failure) stops after Load: nothing trains on,
        // scores or logs a stale batch; the runner ends the run after the step.
        for label in [TrainStep.intern(), ValidationStep.intern()] {
            for &set in &order[1..] {
                app.schedules().configure_sets(label, set.run_if(no_failure));
            }
        }
        app.schedules().configure_sets(
            ValidationEnd,
            (
                ValidationEndSet::Summarize,
                ValidationEndSet::Fitness,
                ValidationEndSet::Checkpoint,
                ValidationEndSet::Log,
            )
                .chain(),
        );
        // Checkpoints and logs go into the run directory: an evaluation-only pass has none and writes nothing.
        for set in [ValidationEndSet::Checkpoint, ValidationEndSet::Log] {
            app.schedules().configure_sets(ValidationEnd, set.run_if(resource_exists::<RunInfo>));
        }
        app
    }

    fn schedules(&mut self) -> Mut<'_, Schedules> {
        self.world.resource_mut::<Schedules>()
    }

    /// Adds systems to a schedule.
    pub fn add_systems<M>(
        &mut self,
        schedule: impl ScheduleLabel,
        systems: impl IntoScheduleConfigs<ScheduleSystem, M>,
    ) -> &mut Self {
        self.schedules().add_systems(schedule, systems);
        self
    }

    /// Inserts (or replaces) a resource.
    pub fn insert_resource<R: Resource>(&mut self, r: R) -> &mut Self {
        self.world.insert_resource(r);
        self
    }

    /// Installs a plugin.
    pub fn add_plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        plugin.build(self);
        self
    }

    /// Runs one schedule.
    pub fn run(&mut self, schedule: impl ScheduleLabel) {
        self.world.run_schedule(schedule);
    }
}
